//! Compositional scenes: the grammar behind every test-web image and its alt text.
//!
//! A scene is one or two groups of identical objects (colour, shape, count) on a textured
//! background; two groups stand in a spatial relation. The caption grammar is invertible
//! ([`caption`] / [`parse_caption`]) and supports minimal edits ([`minimal_edits`]), so the trainer's
//! evaluation can ask whether a model sees each attribute — shape included — rather than only the
//! colours. [`render`] draws the scene photo-like (gradients, textures, noise) with objects large
//! enough that every attribute survives a 64 px thumbnail.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

/// Object colours: six hues far apart, so colour is learnable and never ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Black.
    Black,
}

impl Colour {
    /// Every colour, in caption-grammar order.
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Black,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Black => "black",
        }
    }

    fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [215.0, 35.0, 35.0],
            Colour::Green => [35.0, 165.0, 55.0],
            Colour::Blue => [40.0, 75.0, 215.0],
            Colour::Yellow => [240.0, 210.0, 30.0],
            Colour::Purple => [140.0, 45.0, 175.0],
            Colour::Black => [22.0, 22.0, 22.0],
        }
    }
}

/// Object shapes: silhouettes that stay distinct at a few pixels across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// An axis-aligned filled square.
    Square,
    /// A filled triangle pointing up.
    Triangle,
    /// A five-pointed star.
    Star,
    /// A plus sign.
    Cross,
}

impl Shape {
    /// Every shape, in caption-grammar order.
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Cross,
    ];

    /// The singular caption word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }

    /// The plural caption word.
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
        }
    }

    /// Whether (u, v), in the shape's unit box [-1, 1]², lies inside the silhouette.
    fn contains(self, u: f32, v: f32) -> bool {
        match self {
            Shape::Circle => u * u + v * v <= 0.88 * 0.88,
            Shape::Square => u.abs() <= 0.8 && v.abs() <= 0.8,
            Shape::Triangle => (-0.9..=0.8).contains(&v) && u.abs() <= (v + 0.9) * 0.58,
            Shape::Cross => {
                (u.abs() <= 0.3 && v.abs() <= 0.92) || (v.abs() <= 0.3 && u.abs() <= 0.92)
            }
            Shape::Star => star_contains(u, v),
        }
    }
}

fn star_contains(u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    if r < 0.38 {
        return true;
    }
    let sector = std::f32::consts::TAU / 5.0;
    let theta = v.atan2(u) + std::f32::consts::FRAC_PI_2;
    let t = theta.rem_euclid(sector) / sector;
    let tip = (t - 0.5).abs() * 2.0;
    r <= 0.38 + 0.6 * tip * tip
}

/// Background textures (the caption's last words); rendered in muted tones so objects stand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Background {
    /// Diagonal stripes.
    Striped,
    /// A checkerboard.
    Checkered,
    /// A grid of dots.
    Dotted,
    /// Horizontal waves.
    Wavy,
}

impl Background {
    /// Every background, in caption-grammar order.
    pub const ALL: [Background; 4] = [
        Background::Striped,
        Background::Checkered,
        Background::Dotted,
        Background::Wavy,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Background::Striped => "striped",
            Background::Checkered => "checkered",
            Background::Dotted => "dotted",
            Background::Wavy => "wavy",
        }
    }
}

/// How the first object group stands relative to the second. Only two relations exist so that
/// "A above B" and "B below A" can never be two captions for one picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    /// The first group is in the top half, the second in the bottom half.
    Above,
    /// The first group is in the left half, the second in the right half.
    LeftOf,
}

impl Relation {
    /// The caption words.
    pub fn words(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::LeftOf => "to the left of",
        }
    }
}

/// A group of `count` identical objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Object {
    /// The fill colour.
    pub colour: Colour,
    /// The silhouette.
    pub shape: Shape,
    /// How many copies, 1 to 3.
    pub count: u8,
}

/// Counts the grammar knows (caption words "a", "two", "three").
pub const COUNTS: [u8; 3] = [1, 2, 3];

/// One image's content: a group, optionally a second group in a relation, and a background.
/// Two groups always differ in both colour and shape, so swaps are visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scene {
    /// The group named first in the caption.
    pub first: Object,
    /// The second group and where the first stands relative to it.
    pub second: Option<(Relation, Object)>,
    /// The background texture.
    pub background: Background,
}

impl Scene {
    /// Whether the scene obeys the grammar's constraints (counts 1–3, two groups differ in
    /// colour and in shape).
    pub fn is_valid(&self) -> bool {
        let count_ok = |o: &Object| COUNTS.contains(&o.count);
        match &self.second {
            None => count_ok(&self.first),
            Some((_, b)) => {
                count_ok(&self.first)
                    && count_ok(b)
                    && b.colour != self.first.colour
                    && b.shape != self.first.shape
            }
        }
    }

    /// Draws a valid scene; `two_objects` of them have a second group.
    pub fn random(rng: &mut impl Rng, two_objects: bool) -> Scene {
        let pick = |rng: &mut dyn rand::RngCore| Object {
            colour: Colour::ALL[rng.random_range(0..Colour::ALL.len())],
            shape: Shape::ALL[rng.random_range(0..Shape::ALL.len())],
            count: COUNTS[rng.random_range(0..COUNTS.len())],
        };
        let first = pick(rng);
        let background = Background::ALL[rng.random_range(0..Background::ALL.len())];
        if !two_objects {
            return Scene {
                first,
                second: None,
                background,
            };
        }
        loop {
            let b = pick(rng);
            let rel = if rng.random_bool(0.5) {
                Relation::Above
            } else {
                Relation::LeftOf
            };
            let s = Scene {
                first,
                second: Some((rel, b)),
                background,
            };
            if s.is_valid() {
                return s;
            }
        }
    }

    /// The groups in caption order.
    pub fn objects(&self) -> Vec<Object> {
        let mut v = vec![self.first];
        v.extend(self.second.map(|(_, b)| b));
        v
    }
}

fn object_phrase(o: &Object) -> String {
    match o.count {
        1 => format!("a {} {}", o.colour.name(), o.shape.name()),
        2 => format!("two {} {}", o.colour.name(), o.shape.plural()),
        n => format!("{} {} {}", count_word(n), o.colour.name(), o.shape.plural()),
    }
}

fn count_word(n: u8) -> &'static str {
    match n {
        1 => "a",
        2 => "two",
        _ => "three",
    }
}

/// The canonical caption, e.g. "two red circles above a blue square on a striped background".
pub fn caption(scene: &Scene) -> String {
    let mut s = object_phrase(&scene.first);
    if let Some((rel, b)) = &scene.second {
        s.push(' ');
        s.push_str(rel.words());
        s.push(' ');
        s.push_str(&object_phrase(b));
    }
    s.push_str(" on a ");
    s.push_str(scene.background.name());
    s.push_str(" background");
    s
}

/// Parses a caption of the grammar back into its scene, ignoring case, extra whitespace and a
/// final full stop. `None` for anything else (decorative alts, other languages, long alts).
pub fn parse_caption(text: &str) -> Option<Scene> {
    let lower = text.trim().trim_end_matches('.').to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let mut rest = words.as_slice();
    let first = parse_object(&mut rest)?;
    let second = match rest {
        ["above", tail @ ..] => {
            rest = tail;
            Some((Relation::Above, parse_object(&mut rest)?))
        }
        ["to", "the", "left", "of", tail @ ..] => {
            rest = tail;
            Some((Relation::LeftOf, parse_object(&mut rest)?))
        }
        _ => None,
    };
    let background = match rest {
        ["on", "a", bg, "background"] => *Background::ALL.iter().find(|b| b.name() == *bg)?,
        _ => return None,
    };
    let scene = Scene {
        first,
        second,
        background,
    };
    scene.is_valid().then_some(scene)
}

fn parse_object(rest: &mut &[&str]) -> Option<Object> {
    let [count, colour, shape, tail @ ..] = *rest else {
        return None;
    };
    let count = match *count {
        "a" | "one" => 1,
        "two" => 2,
        "three" => 3,
        _ => return None,
    };
    let colour = *Colour::ALL.iter().find(|c| c.name() == *colour)?;
    let shape = *Shape::ALL.iter().find(|s| {
        if count == 1 {
            s.name() == *shape
        } else {
            s.plural() == *shape
        }
    })?;
    *rest = tail;
    Some(Object {
        colour,
        shape,
        count,
    })
}

/// The attribute a minimal edit changes (the trainer reports accuracy per attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// One group's colour.
    Colour,
    /// One group's shape.
    Shape,
    /// One group's count.
    Count,
    /// The relation, or which group stands first.
    Position,
    /// The background texture.
    Background,
    /// Colours, shapes or counts exchanged between the two groups (attribute binding).
    Swap,
}

impl Attribute {
    /// Every attribute, in report order.
    pub const ALL: [Attribute; 6] = [
        Attribute::Colour,
        Attribute::Shape,
        Attribute::Count,
        Attribute::Position,
        Attribute::Background,
        Attribute::Swap,
    ];

    /// The lower-case name used in JSON reports.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Colour => "colour",
            Attribute::Shape => "shape",
            Attribute::Count => "count",
            Attribute::Position => "position",
            Attribute::Background => "background",
            Attribute::Swap => "swap",
        }
    }
}

/// Every valid scene that differs from `scene` in exactly one attribute, or by a swap of one
/// attribute between its two groups; each tagged with what changed, without duplicates.
pub fn minimal_edits(scene: &Scene) -> Vec<(Attribute, Scene)> {
    let mut out: Vec<(Attribute, Scene)> = Vec::new();
    let mut push = |attr: Attribute, s: Scene| {
        if s != *scene && s.is_valid() && !out.iter().any(|(_, o)| *o == s) {
            out.push((attr, s));
        }
    };
    for idx in 0..scene.objects().len() {
        for c in Colour::ALL {
            push(Attribute::Colour, with_object(scene, idx, |o| o.colour = c));
        }
        for sh in Shape::ALL {
            push(Attribute::Shape, with_object(scene, idx, |o| o.shape = sh));
        }
        for n in COUNTS {
            push(Attribute::Count, with_object(scene, idx, |o| o.count = n));
        }
    }
    if let Some((rel, b)) = scene.second {
        let other = match rel {
            Relation::Above => Relation::LeftOf,
            Relation::LeftOf => Relation::Above,
        };
        push(
            Attribute::Position,
            Scene {
                second: Some((other, b)),
                ..*scene
            },
        );
        push(
            Attribute::Position,
            Scene {
                first: b,
                second: Some((rel, scene.first)),
                ..*scene
            },
        );
        let a = scene.first;
        let swaps = [
            (
                Object {
                    colour: b.colour,
                    ..a
                },
                Object {
                    colour: a.colour,
                    ..b
                },
            ),
            (
                Object {
                    shape: b.shape,
                    ..a
                },
                Object {
                    shape: a.shape,
                    ..b
                },
            ),
            (
                Object {
                    count: b.count,
                    ..a
                },
                Object {
                    count: a.count,
                    ..b
                },
            ),
        ];
        for (na, nb) in swaps {
            push(
                Attribute::Swap,
                Scene {
                    first: na,
                    second: Some((rel, nb)),
                    ..*scene
                },
            );
        }
    }
    for bg in Background::ALL {
        push(
            Attribute::Background,
            Scene {
                background: bg,
                ..*scene
            },
        );
    }
    out
}

/// Hard-negative captions for training (NegCLIP's recipe): captions of minimal edits of `scene`,
/// at most `cap(attribute)` of each attribute (drawn with `rng`), never a held-out combination,
/// so evaluation text stays unseen.
pub fn hard_negative_captions(
    scene: &Scene,
    cap: impl Fn(Attribute) -> usize,
    rng: &mut impl Rng,
) -> Vec<String> {
    let edits = minimal_edits(scene);
    let mut out = Vec::new();
    for attr in Attribute::ALL {
        let mut mine: Vec<&Scene> = edits
            .iter()
            .filter(|(a, s)| *a == attr && !is_held_out(s))
            .map(|(_, s)| s)
            .collect();
        while mine.len() > cap(attr) {
            mine.swap_remove(rng.random_range(0..mine.len()));
        }
        out.extend(mine.into_iter().map(caption));
    }
    out
}

fn with_object(scene: &Scene, idx: usize, edit: impl FnOnce(&mut Object)) -> Scene {
    let mut s = *scene;
    match (idx, &mut s.second) {
        (0, _) => edit(&mut s.first),
        (_, Some((_, b))) => edit(b),
        (_, None) => {}
    }
    s
}

/// Whether the scene's combination is held out of training (about 10% of captions, by a hash
/// of the canonical caption, independent of any seed), so evaluation can measure
/// generalisation to combinations never seen.
pub fn is_held_out(scene: &Scene) -> bool {
    fnv1a(caption(scene).as_bytes()).is_multiple_of(10)
}

/// 64-bit FNV-1a: a stable hash that never changes between Rust releases (unlike `DefaultHasher`).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A stateless per-pixel hash in [0, 1): noise without an RNG in the inner loop.
pub(crate) fn hash01(x: u32, y: u32, seed: u64) -> f32 {
    let mut z = seed ^ ((u64::from(x) << 32) | u64::from(y)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Renders `scene` at `w`×`h` pixels. The objects stand in the central square (side min(w, h)) so
/// any centre crop keeps them; everything else is textured, lit and noisy like a photo. The same
/// (scene, w, h, seed) always gives the same pixels.
pub fn render(scene: &Scene, w: u32, h: u32, seed: u64) -> RgbImage {
    let (w, h) = (w.max(1), h.max(1));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ fnv1a(caption(scene).as_bytes()));
    let mut img = paint_background(scene.background, w, h, seed, &mut rng);
    let side = w.min(h) as f32;
    let (ox, oy) = ((w as f32 - side) / 2.0, (h as f32 - side) / 2.0);
    let regions: Vec<(Object, [f32; 4])> = match scene.second {
        None => vec![(scene.first, [ox, oy, side, side])],
        Some((Relation::Above, b)) => vec![
            (scene.first, [ox, oy, side, side / 2.0]),
            (b, [ox, oy + side / 2.0, side, side / 2.0]),
        ],
        Some((Relation::LeftOf, b)) => vec![
            (scene.first, [ox, oy, side / 2.0, side]),
            (b, [ox + side / 2.0, oy, side / 2.0, side]),
        ],
    };
    for (obj, region) in regions {
        for (cx, cy, d) in layout(obj.count, region, &mut rng) {
            draw_object(&mut img, obj, cx, cy, d, seed, &mut rng);
        }
    }
    img
}

/// A textured, lit, noisy banner without objects: the picture behind decorative alts.
pub(crate) fn render_plain(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bg = Background::ALL[(seed % 4) as usize];
    paint_background(bg, w.max(1), h.max(1), seed, &mut rng)
}

/// Centres and diameters of `count` objects inside `region` = [x, y, w, h].
fn layout(count: u8, region: [f32; 4], rng: &mut impl Rng) -> Vec<(f32, f32, f32)> {
    let [x, y, w, h] = region;
    let cells: Vec<[f32; 4]> = if count == 1 {
        vec![region]
    } else if (w / h).max(h / w) >= 1.5 {
        let n = f32::from(count);
        (0..count)
            .map(|i| {
                let i = f32::from(i);
                if w >= h {
                    [x + i * w / n, y, w / n, h]
                } else {
                    [x, y + i * h / n, w, h / n]
                }
            })
            .collect()
    } else {
        let skip = rng.random_range(0..4usize);
        let quads = [
            [x, y, w / 2.0, h / 2.0],
            [x + w / 2.0, y, w / 2.0, h / 2.0],
            [x, y + h / 2.0, w / 2.0, h / 2.0],
            [x + w / 2.0, y + h / 2.0, w / 2.0, h / 2.0],
        ];
        if count == 2 {
            let diag = if rng.random_bool(0.5) { [0, 3] } else { [1, 2] };
            diag.iter().map(|&i| quads[i]).collect()
        } else {
            (0..4).filter(|&i| i != skip).map(|i| quads[i]).collect()
        }
    };
    cells
        .into_iter()
        .map(|[cx, cy, cw, ch]| {
            let d = cw.min(ch) * rng.random_range(0.72..0.86);
            let jx = (cw - d) * rng.random_range(-0.3..0.3);
            let jy = (ch - d) * rng.random_range(-0.3..0.3);
            (cx + cw / 2.0 + jx, cy + ch / 2.0 + jy, d)
        })
        .collect()
}

fn paint_background(bg: Background, w: u32, h: u32, seed: u64, rng: &mut impl Rng) -> RgbImage {
    let base: f32 = rng.random_range(165.0..215.0);
    let tint: [f32; 3] = [
        rng.random_range(-18.0..18.0),
        rng.random_range(-18.0..18.0),
        rng.random_range(-18.0..18.0),
    ];
    let contrast: f32 = rng.random_range(30.0..50.0);
    let period = (w.min(h) as f32 / rng.random_range(5.0..8.0)).max(4.0);
    let (gx, gy): (f32, f32) = (rng.random_range(-0.25..0.25), rng.random_range(-0.25..0.25));
    let (cw, ch) = (w as f32 / 2.0, h as f32 / 2.0);
    let norm = cw.max(ch);
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let t = texture(bg, fx, fy, period);
        let (dx, dy) = ((fx - cw) / norm, (fy - ch) / norm);
        let light = 1.0 + gx * dx + gy * dy - 0.18 * (dx * dx + dy * dy);
        let noise = (hash01(x, y, seed) - 0.5) * 22.0;
        let v = (base - contrast * t) * light + noise;
        Rgb(tint.map(|c| (v + c).clamp(0.0, 255.0) as u8))
    })
}

/// The texture's darker tone weight at a pixel, in [0, 1].
fn texture(bg: Background, x: f32, y: f32, p: f32) -> f32 {
    match bg {
        Background::Striped => f32::from(u8::from((x + y).rem_euclid(p) < p / 2.0)),
        Background::Checkered => {
            let (i, j) = ((x / p).floor() as i64, (y / p).floor() as i64);
            f32::from(u8::from((i + j).rem_euclid(2) == 0))
        }
        Background::Dotted => {
            let (u, v) = (x.rem_euclid(p) - p / 2.0, y.rem_euclid(p) - p / 2.0);
            f32::from(u8::from(u * u + v * v < (p * 0.22) * (p * 0.22)))
        }
        Background::Wavy => {
            let s = y + (x * std::f32::consts::TAU / (p * 2.0)).sin() * p * 0.35;
            f32::from(u8::from(s.rem_euclid(p) < p / 2.0))
        }
    }
}

fn draw_object(
    img: &mut RgbImage,
    obj: Object,
    cx: f32,
    cy: f32,
    d: f32,
    seed: u64,
    rng: &mut impl Rng,
) {
    let jitter: [f32; 3] = [
        rng.random_range(-14.0..14.0),
        rng.random_range(-14.0..14.0),
        rng.random_range(-14.0..14.0),
    ];
    let base = obj.colour.rgb();
    let r = d / 2.0;
    let (w, h) = img.dimensions();
    let x0 = (cx - r).floor().max(0.0) as u32;
    let y0 = (cy - r).floor().max(0.0) as u32;
    let x1 = ((cx + r).ceil() as u32).min(w);
    let y1 = ((cy + r).ceil() as u32).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            let u = (x as f32 + 0.5 - cx) / r;
            let v = (y as f32 + 0.5 - cy) / r;
            if !obj.shape.contains(u, v) {
                continue;
            }
            let shade = 1.08 - 0.16 * (u + v);
            let noise = (hash01(x, y, seed ^ 0x5eed) - 0.5) * 18.0;
            let px = std::array::from_fn(|c| {
                (((base[c] + jitter[c]) * shade) + noise).clamp(0.0, 255.0) as u8
            });
            img.put_pixel(x, y, Rgb(px));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn captions_round_trip_and_edits_are_distinct() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for i in 0..500 {
            let s = Scene::random(&mut rng, i % 3 != 0);
            let c = caption(&s);
            assert_eq!(parse_caption(&c), Some(s), "{c}");
            assert_eq!(parse_caption(&format!("  {}.", c.to_uppercase())), Some(s));
            for (_, e) in minimal_edits(&s) {
                assert_ne!(caption(&e), c);
                assert_eq!(parse_caption(&caption(&e)), Some(e));
            }
        }
        assert_eq!(parse_caption("logo"), None);
        assert_eq!(
            parse_caption("a red circle above a red square on a dotted background"),
            None
        );
    }

    #[test]
    fn two_object_scenes_have_every_kind_of_edit() {
        let s = parse_caption("two red circles above a blue square on a striped background")
            .expect("grammar caption");
        let edits = minimal_edits(&s);
        for a in Attribute::ALL {
            assert!(edits.iter().any(|(e, _)| *e == a), "{a:?} missing");
        }
        let captions: Vec<String> = edits.iter().map(|(_, e)| caption(e)).collect();
        assert!(captions
            .contains(&"two blue circles above a red square on a striped background".into()));
        assert!(captions
            .contains(&"a blue square above two red circles on a striped background".into()));
    }

    #[test]
    fn hard_negatives_are_capped_minimal_edits_and_never_held_out() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let cap = |a: Attribute| match a {
            Attribute::Position => usize::MAX,
            Attribute::Background => 0,
            _ => 1,
        };
        let mut held_out_edits = 0;
        for i in 0..300 {
            let s = Scene::random(&mut rng, i % 4 != 0);
            let edits = minimal_edits(&s);
            held_out_edits += edits.iter().filter(|(_, e)| is_held_out(e)).count();
            let negatives = hard_negative_captions(&s, cap, &mut rng);
            let mut per_attr: BTreeMap<Attribute, usize> = BTreeMap::new();
            for n in &negatives {
                let scene = parse_caption(n).expect("a grammar caption");
                assert!(!is_held_out(&scene), "held-out caption leaked: {n}");
                let (attr, _) = edits
                    .iter()
                    .find(|(_, e)| *e == scene)
                    .unwrap_or_else(|| panic!("{n} is not a minimal edit of {}", caption(&s)));
                *per_attr.entry(*attr).or_default() += 1;
            }
            for attr in Attribute::ALL {
                let available = edits
                    .iter()
                    .filter(|(a, e)| *a == attr && !is_held_out(e))
                    .count();
                let got = per_attr.get(&attr).copied().unwrap_or(0);
                assert_eq!(got, available.min(cap(attr)), "{attr:?} of {}", caption(&s));
            }
        }
        assert!(held_out_edits > 0, "the held-out filter was exercised");
    }

    #[test]
    fn render_is_deterministic_and_objects_cover_the_centre() {
        let s = parse_caption("a black square on a wavy background").expect("caption");
        let a = render(&s, 64, 64, 7);
        assert_eq!(a, render(&s, 64, 64, 7));
        let dark = a.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
        assert!(dark > 64 * 64 / 5, "the square covers a large part: {dark}");
    }

    #[test]
    fn shapes_differ_at_64_px() {
        let masks: Vec<Vec<bool>> = Shape::ALL
            .iter()
            .map(|&shape| {
                let mut img = RgbImage::from_pixel(64, 64, Rgb([255, 255, 255]));
                let obj = Object {
                    colour: Colour::Black,
                    shape,
                    count: 1,
                };
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
                draw_object(&mut img, obj, 32.0, 32.0, 44.0, 1, &mut rng);
                img.pixels().map(|p| p.0[0] < 128).collect()
            })
            .collect();
        for (i, a) in masks.iter().enumerate() {
            assert!(
                a.iter().filter(|&&x| x).count() > 64 * 64 / 8,
                "{:?} is large",
                Shape::ALL[i]
            );
            for (j, b) in masks.iter().enumerate().skip(i + 1) {
                let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
                let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
                assert!(
                    diff * 100 > union * 12,
                    "{:?} and {:?} look alike at 64 px",
                    Shape::ALL[i],
                    Shape::ALL[j]
                );
            }
        }
    }
}

//! The site plan: pages, their link graph, every way the web embeds an image, robots.txt and the
//! manifest rows that say what a correct crawler and downloader must find. Everything follows
//! from (seed, pages, faults) and the base URL; image bytes are rendered on first request and
//! cached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::faults::Fault;
use super::images::{self, Format};
use super::manifest::ManifestRow;
use super::scene::{self, Scene};
use super::TestWebConfig;

/// Something the server answers a path with.
pub(crate) enum Resource {
    /// Bytes known at start: pages, robots.txt, parquet files.
    Static {
        content_type: &'static str,
        body: Bytes,
    },
    /// An image rendered on first request.
    Image(Arc<LazyImage>),
    /// A fault-area behaviour.
    Fault(Fault),
}

/// What an image shows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Picture {
    /// A grammar scene (its caption describes it).
    Scene(Scene),
    /// A textured banner without objects (for decorative and free-text alts).
    Plain,
}

/// An image's recipe and, once rendered, its bytes.
pub(crate) struct LazyImage {
    picture: Picture,
    width: u32,
    height: u32,
    seed: u64,
    format: Format,
    orientation: u16,
    bytes: OnceLock<Bytes>,
}

impl LazyImage {
    fn new(picture: Picture, (width, height): (u32, u32), seed: u64, format: Format) -> Self {
        LazyImage {
            picture,
            width,
            height,
            seed,
            format,
            orientation: 1,
            bytes: OnceLock::new(),
        }
    }

    /// The Content-Type to serve.
    pub(crate) fn mime(&self) -> &'static str {
        self.format.mime()
    }

    /// The bytes if already rendered (so the server only offloads the first request).
    pub(crate) fn ready(&self) -> Option<Bytes> {
        self.bytes.get().cloned()
    }

    /// Renders and encodes once; later calls return the cached bytes.
    pub(crate) fn bytes(&self) -> Bytes {
        self.bytes
            .get_or_init(|| Bytes::from(self.encode()))
            .clone()
    }

    fn encode(&self) -> Vec<u8> {
        let img = match self.picture {
            Picture::Scene(s) => scene::render(&s, self.width, self.height, self.seed),
            Picture::Plain => scene::render_plain(self.width, self.height, self.seed),
        };
        if self.format == Format::Jpeg && self.orientation != 1 {
            images::jpeg_with_orientation(&img, self.orientation)
        } else {
            images::encode(&img, self.format)
        }
    }
}

/// The generated site: its routes by path and the manifest.
pub(crate) struct Site {
    pub routes: HashMap<String, Resource>,
    pub manifest: Vec<ManifestRow>,
}

/// A deterministic RNG for one purpose (`tag`) and index, independent of generation order.
pub(crate) fn rng_for(seed: u64, tag: &str, index: u64) -> ChaCha8Rng {
    let mut key = seed.to_le_bytes().to_vec();
    key.extend_from_slice(tag.as_bytes());
    key.extend_from_slice(&index.to_le_bytes());
    ChaCha8Rng::seed_from_u64(scene::fnv1a(&key))
}

fn page_path(i: usize) -> String {
    if i == 0 {
        "/".to_string()
    } else {
        format!("/pages/{i}.html")
    }
}

/// Links per page: a binary tree (depth ~log2 N), the parent (cycles), the next page and one
/// random page.
fn link_graph(n: usize, seed: u64) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| {
            let mut rng = rng_for(seed, "links", i as u64);
            let mut v: Vec<usize> = [2 * i + 1, 2 * i + 2, i + 1]
                .into_iter()
                .filter(|&j| j < n)
                .collect();
            if i > 0 {
                v.push((i - 1) / 2);
            }
            v.push(rng.random_range(0..n));
            v.dedup();
            v
        })
        .collect()
}

fn depths(graph: &[Vec<usize>]) -> Vec<i32> {
    let mut d = vec![-1; graph.len()];
    d[0] = 0;
    let mut q = VecDeque::from([0usize]);
    while let Some(i) = q.pop_front() {
        for &j in &graph[i] {
            if d[j] < 0 {
                d[j] = d[i] + 1;
                q.push_back(j);
            }
        }
    }
    d
}

/// How an alt text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AltKind {
    Scene,
    Entity,
    Whitespace,
    NonAscii,
    Long,
    Text,
    Decorative,
    Empty,
}

const ALT_KINDS: [(AltKind, u32); 8] = [
    (AltKind::Scene, 72),
    (AltKind::Entity, 4),
    (AltKind::Whitespace, 4),
    (AltKind::NonAscii, 4),
    (AltKind::Long, 3),
    (AltKind::Text, 3),
    (AltKind::Decorative, 6),
    (AltKind::Empty, 4),
];

impl AltKind {
    fn name(self) -> &'static str {
        match self {
            AltKind::Scene => "scene",
            AltKind::Entity => "entity",
            AltKind::Whitespace => "whitespace",
            AltKind::NonAscii => "non_ascii",
            AltKind::Long => "long",
            AltKind::Text => "text",
            AltKind::Decorative => "decorative",
            AltKind::Empty => "empty",
        }
    }

    fn has_scene(self) -> bool {
        !matches!(self, AltKind::Text | AltKind::Decorative | AltKind::Empty)
    }
}

/// How an `<img>` is embedded in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    SrcRoot,
    SrcRelative,
    SrcAbsolute,
    SrcQuery,
    SrcsetW,
    SrcsetX,
    DataSrc,
    DataOriginal,
    Picture,
    Uppercase,
    Private,
    PrivateAllowed,
    Missing,
    BaseHref,
}

const FORMS: [(Form, u32); 13] = [
    (Form::SrcRoot, 28),
    (Form::SrcRelative, 14),
    (Form::SrcAbsolute, 10),
    (Form::SrcQuery, 5),
    (Form::SrcsetW, 8),
    (Form::SrcsetX, 5),
    (Form::DataSrc, 8),
    (Form::DataOriginal, 3),
    (Form::Picture, 6),
    (Form::Uppercase, 4),
    (Form::Private, 3),
    (Form::PrivateAllowed, 1),
    (Form::Missing, 3),
];

impl Form {
    fn name(self) -> &'static str {
        match self {
            Form::SrcRoot => "src_root",
            Form::SrcRelative => "src_relative",
            Form::SrcAbsolute => "src_absolute",
            Form::SrcQuery => "src_query",
            Form::SrcsetW => "srcset_w",
            Form::SrcsetX => "srcset_x",
            Form::DataSrc => "data_src",
            Form::DataOriginal => "data_original",
            Form::Picture => "picture",
            Form::Uppercase => "uppercase",
            Form::Private => "private",
            Form::PrivateAllowed => "private_allowed",
            Form::Missing => "missing",
            Form::BaseHref => "base_href",
        }
    }
}

fn weighted<T: Copy>(rng: &mut impl Rng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (t, w) in table {
        if x < *w {
            return *t;
        }
        x -= w;
    }
    table[table.len() - 1].0
}

/// The encodings pages are served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Utf8,
    /// windows-1252, declared in the Content-Type header and a `<meta>`.
    Cp1252Header,
    /// windows-1252, declared only by `<meta charset>` (the client must sniff it).
    Cp1252Meta,
}

/// A transparent 1×1 GIF: the placeholder lazy-loading pages put in `src`.
const PLACEHOLDER: &str =
    "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";

const LONG_TAIL: &str = "This photograph was taken on a quiet afternoon in the studio, where the \
light falls softly from a tall window on the left and the objects were arranged by hand on a \
printed sheet of paper. The photographer used a fixed lens, a small aperture and a long exposure \
so that every edge stays sharp, then scanned the print at a high resolution, cleaned the dust \
spots and adjusted the contrast a little. The series it belongs to explores simple geometric \
forms, primary colours and repeating patterns, and has been shown in several small galleries \
over the years, always with this same description printed beside the frame.";

const DECORATIVE: [&str; 6] = ["logo", "spacer", "icon", "banner", "image", "thumbnail"];

const FREE_TEXT: [&str; 4] = [
    "Fish & Chips <3 \"the best\"",
    "Our team at the 2019 offsite",
    "View of the harbour at dusk",
    "Click here to subscribe",
];

/// One planned image: what it shows, how its alt is written, how it is embedded and encoded.
struct ImgPlan {
    kind: AltKind,
    form: Form,
    format: Format,
    size: (u32, u32),
    orientation: u16,
    scene: Scene,
}

fn plan_image(rng: &mut ChaCha8Rng, kind: AltKind, form: Form) -> ImgPlan {
    let format = match form {
        Form::Picture => Format::Webp,
        Form::Private | Form::PrivateAllowed | Form::Missing => Format::Jpeg,
        _ => weighted(
            rng,
            &[
                (Format::Jpeg, 50),
                (Format::Png, 20),
                (Format::Webp, 15),
                (Format::Gif, 15),
            ],
        ),
    };
    let orientation = if format == Format::Jpeg && rng.random_bool(0.12) {
        [2u16, 3, 6, 8][rng.random_range(0..4)]
    } else {
        1
    };
    let two = rng.random_bool(0.7);
    let mut scene = Scene::random(rng, two);
    // A held-out scene only ever appears under an alt that parses back to it, so a trainer can
    // keep every held-out combination out of training by parsing captions.
    while matches!(kind, AltKind::NonAscii | AltKind::Long) && scene::is_held_out(&scene) {
        scene = Scene::random(rng, two);
    }
    ImgPlan {
        kind,
        form,
        format,
        size: plan_size(rng, format),
        orientation,
        scene,
    }
}

/// Width and height: mostly 64–320 px, a few up to 640, one in 200 with a 2048 px long side;
/// aspect ratio up to 5:1. Small on purpose: the default site renders in a few CPU-seconds.
fn plan_size(rng: &mut ChaCha8Rng, format: Format) -> (u32, u32) {
    let roll: f32 = rng.random();
    let short: u32 = match roll {
        r if r < 0.75 => rng.random_range(64..=160),
        r if r < 0.95 => rng.random_range(161..=320),
        r if r < 0.995 => rng.random_range(321..=640),
        _ => rng.random_range(600..=1024),
    };
    let roll: f32 = rng.random();
    let aspect: f32 = match roll {
        r if r < 0.75 => rng.random_range(1.0..1.5),
        r if r < 0.95 => rng.random_range(1.5..3.0),
        _ => rng.random_range(3.0..=5.0),
    };
    let (short, aspect) = match format {
        Format::Gif => (short.min(160), aspect.min(2.0)),
        _ if short >= 600 => (short, 2048.0 / short as f32),
        _ => (short, aspect),
    };
    let long = ((short as f32 * aspect) as u32).min(2048);
    if rng.random_bool(0.5) {
        (long, short)
    } else {
        (short, long)
    }
}

/// Builds the site for `cfg` served at `base` (e.g. `http://127.0.0.1:8000`).
pub(crate) fn build(cfg: &TestWebConfig, base: &str) -> Site {
    let graph = link_graph(cfg.pages, cfg.seed);
    let depth = depths(&graph);
    let mut b = Builder {
        seed: cfg.seed,
        base: base.to_string(),
        routes: HashMap::new(),
        manifest: Vec::new(),
        next_id: 0,
    };
    for i in 0..cfg.pages {
        b.page(i, &graph[i], depth[i], cfg.faults);
    }
    for k in 0..3 {
        b.private_page(k);
    }
    if cfg.faults {
        b.fault_page();
    }
    b.static_text(
        "/robots.txt",
        "text/plain; charset=utf-8",
        ROBOTS.as_bytes().to_vec(),
    );
    let manifest_bytes = super::manifest::manifest_parquet(&b.manifest);
    let urls_bytes = super::manifest::urls_parquet(&b.manifest);
    b.static_text(
        "/manifest.parquet",
        "application/vnd.apache.parquet",
        manifest_bytes,
    );
    b.static_text(
        "/urls.parquet",
        "application/vnd.apache.parquet",
        urls_bytes,
    );
    Site {
        routes: b.routes,
        manifest: b.manifest,
    }
}

/// Disallows `/private/` except `/private/open/` (longest match wins, RFC 9309).
const ROBOTS: &str =
    "# wit test web\nUser-agent: *\nAllow: /private/open/\nDisallow: /private/\n\n\
User-agent: ExampleBadBot\nDisallow: /\n";

struct Builder {
    seed: u64,
    base: String,
    routes: HashMap<String, Resource>,
    manifest: Vec<ManifestRow>,
    next_id: u64,
}

/// A page under construction: its HTML and the rows it contributes.
struct PageCtx {
    path: String,
    title: String,
    depth: i32,
    charset: Charset,
    upper: bool,
    base_dir: Option<String>,
    html: String,
    position: i32,
}

impl Builder {
    fn static_text(&mut self, path: &str, content_type: &'static str, body: Vec<u8>) {
        self.routes.insert(
            path.to_string(),
            Resource::Static {
                content_type,
                body: Bytes::from(body),
            },
        );
    }

    fn page(&mut self, i: usize, links: &[usize], depth: i32, faults: bool) {
        let mut rng = rng_for(self.seed, "page", i as u64);
        let charset = match i {
            1 => Charset::Cp1252Header,
            2 => Charset::Cp1252Meta,
            _ => Charset::Utf8,
        };
        let title = match charset {
            Charset::Utf8 => format!("Gallery {i} – shapes & colours"),
            _ => format!("Galerie {i} – café crème"),
        };
        let mut ctx = PageCtx {
            path: page_path(i),
            title,
            depth,
            charset,
            upper: i == 4,
            base_dir: (i == 3).then(|| format!("/assets/{i}/")),
            html: String::new(),
            position: 0,
        };
        ctx.html.push_str(&page_head(&ctx));
        ctx.html
            .push_str(&self.nav(i, links, &mut rng, ctx.upper, faults));
        ctx.html.push_str(&format!(
            "<!-- <img src=\"/img/commented-{i}.jpg\" alt=\"commented out\"> -->\n\
             <script>var tpl = '<img src=\"/img/script-{i}.jpg\" alt=\"inside a script\">';</script>\n"
        ));
        for (kind, form) in page_images(i, &mut rng) {
            let form = if ctx.base_dir.is_some() {
                Form::BaseHref
            } else if ctx.upper {
                Form::Uppercase
            } else {
                form
            };
            let plan = plan_image(&mut rng, kind, form);
            self.image(&mut ctx, &plan, &mut rng);
        }
        ctx.html
            .push_str("<p>Thanks for visiting.</p>\n</body>\n</html>\n");
        let (content_type, body) = match charset {
            Charset::Utf8 => ("text/html; charset=utf-8", ctx.html.into_bytes()),
            Charset::Cp1252Header => ("text/html; charset=windows-1252", encode_cp1252(&ctx.html)),
            Charset::Cp1252Meta => ("text/html", encode_cp1252(&ctx.html)),
        };
        self.static_text(&ctx.path, content_type, body);
    }

    fn nav(
        &self,
        i: usize,
        links: &[usize],
        rng: &mut ChaCha8Rng,
        upper: bool,
        faults: bool,
    ) -> String {
        let a = if upper { "A HREF" } else { "a href" };
        let end = if upper { "</A>" } else { "</a>" };
        let mut s = String::from("<nav>\n");
        for &j in links {
            let href = self.link_href(i, j, rng);
            s.push_str(&format!("<{a}=\"{href}\">Gallery {j}{end}\n"));
        }
        if i % 10 == 7 {
            s.push_str(&format!(
                "<{a}=\"/private/{}.html\">Members only{end}\n",
                i % 3
            ));
        }
        if i % 15 == 4 {
            s.push_str(&format!("<{a}=\"/missing/{i}.html\">Old gallery{end}\n"));
        }
        if i % 12 == 5 {
            let port = self.base.rsplit(':').next().unwrap_or_default();
            s.push_str(&format!(
                "<{a}=\"http://localhost:{port}/pages/{i}.html\">Mirror{end}\n"
            ));
            s.push_str(&format!(
                "<{a}=\"http://elsewhere.invalid/\">Partner site{end}\n"
            ));
            s.push_str(&format!(
                "<{a}=\"mailto:gallery@example.invalid\">Mail us{end}\n"
            ));
        }
        if i == 0 && faults {
            s.push_str("<a href=\"/faults/index.html\">Broken things</a>\n");
        }
        s.push_str("</nav>\n");
        s
    }

    /// A link from page `i` to page `j`, written in one of the forms URLs take on the web.
    fn link_href(&self, i: usize, j: usize, rng: &mut ChaCha8Rng) -> String {
        let path = page_path(j);
        if i == 3 {
            return path;
        }
        match rng.random_range(0..6) {
            0 => format!("{}{path}", self.base),
            1 if j > 0 => {
                if i == 0 {
                    format!("pages/{j}.html")
                } else {
                    format!("{j}.html")
                }
            }
            2 if j > 0 && i > 0 => format!("../pages/{j}.html#top"),
            3 => format!("{}{path}", self.base.replace("http://", "HTTP://")),
            _ => path,
        }
    }

    /// Adds one image: its route(s), its HTML and its manifest row.
    fn image(&mut self, ctx: &mut PageCtx, plan: &ImgPlan, rng: &mut ChaCha8Rng) {
        let id = self.next_id;
        self.next_id += 1;
        let ext = plan.format.ext();
        let path = match plan.form {
            Form::Private => format!("/private/img/{id}.{ext}"),
            Form::PrivateAllowed => format!("/private/open/{id}.{ext}"),
            Form::Missing => format!("/missing/{id}.{ext}"),
            Form::BaseHref => format!("{}{id}.{ext}", ctx.base_dir.as_deref().unwrap_or("/")),
            _ => format!("/img/{id}.{ext}"),
        };
        let (alt_html, caption) = alt_text(plan, id, ctx.charset, rng);
        let picture = if plan.kind.has_scene() {
            Picture::Scene(plan.scene)
        } else {
            Picture::Plain
        };
        let img_seed = scene::fnv1a(&[self.seed.to_le_bytes(), id.to_le_bytes()].concat());
        let mut lazy = LazyImage::new(picture, plan.size, img_seed, plan.format);
        lazy.orientation = plan.orientation;
        let served = plan.form != Form::Missing;
        if served {
            self.routes
                .insert(path.clone(), Resource::Image(Arc::new(lazy)));
        }
        let small = format!("/img/{id}-small.{ext}");
        if matches!(plan.form, Form::SrcsetW | Form::SrcsetX) {
            let half = ((plan.size.0 / 2).max(32), (plan.size.1 / 2).max(32));
            let lazy = LazyImage::new(picture, half, img_seed, plan.format);
            self.routes
                .insert(small.clone(), Resource::Image(Arc::new(lazy)));
        }
        let (tag, query) = img_tag(plan.form, &path, &small, &self.base, ctx, &alt_html, rng);
        ctx.html.push_str(&format!("<figure>{tag}</figure>\n"));
        let (w, h) = plan.size;
        let scene_caption = plan.kind.has_scene().then(|| scene::caption(&plan.scene));
        self.manifest.push(ManifestRow {
            page_url: format!("{}{}", self.base, ctx.path),
            title: ctx.title.clone(),
            depth: ctx.depth,
            position: ctx.position,
            url: format!("{}{path}{query}", self.base),
            caption,
            expected: match plan.form {
                Form::Private => "disallowed_by_robots",
                Form::Missing => "failed_to_download",
                _ => "success",
            },
            split: split_of(plan.kind.has_scene().then_some(&plan.scene)),
            scene: scene_caption,
            alt_kind: plan.kind.name(),
            boilerplate: matches!(plan.kind, AltKind::Decorative | AltKind::Empty),
            form: plan.form.name(),
            format: if served { plan.format.name() } else { "none" },
            width: served.then_some(w as i32),
            height: served.then_some(h as i32),
            orientation: i32::from(plan.orientation),
            fault: None,
        });
        ctx.position += 1;
    }

    /// Pages inside the robots-disallowed area: a polite crawler never fetches them, so their
    /// images are in no manifest row.
    fn private_page(&mut self, k: usize) {
        let scene = Scene::random(&mut rng_for(self.seed, "private", k as u64), true);
        let path = format!("/private/p{k}.jpg");
        let lazy = LazyImage::new(Picture::Scene(scene), (160, 160), k as u64, Format::Jpeg);
        self.routes
            .insert(path.clone(), Resource::Image(Arc::new(lazy)));
        let html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Members {k}</title></head>\n\
             <body><img src=\"{path}\" alt=\"{}\"><a href=\"/\">Home</a></body></html>\n",
            scene::caption(&scene)
        );
        self.static_text(
            &format!("/private/{k}.html"),
            "text/html; charset=utf-8",
            html.into_bytes(),
        );
    }

    /// `/faults/index.html`: one `<img>` per fault URL, each a manifest row with its outcome.
    fn fault_page(&mut self) {
        let mut rng = rng_for(self.seed, "faults", 0);
        let mut ctx = PageCtx {
            path: "/faults/index.html".to_string(),
            title: "Broken things".to_string(),
            depth: 1,
            charset: Charset::Utf8,
            upper: false,
            base_dir: None,
            html: String::new(),
            position: 0,
        };
        ctx.html.push_str(&page_head(&ctx));
        ctx.html.push_str("<nav><a href=\"/\">Home</a></nav>\n");
        for fault in Fault::ALL {
            for path in fault.paths() {
                self.routes.insert(path.to_string(), Resource::Fault(fault));
            }
            let s = Scene::random(&mut rng, true);
            let cap = scene::caption(&s);
            ctx.html.push_str(&format!(
                "<figure><img src=\"{}\" alt=\"{cap}\"></figure>\n",
                fault.paths()[0]
            ));
            let (format, size) = fault.served_image();
            self.manifest.push(ManifestRow {
                page_url: format!("{}{}", self.base, ctx.path),
                title: ctx.title.clone(),
                depth: 1,
                position: ctx.position,
                url: format!("{}{}", self.base, fault.paths()[0]),
                caption: cap.clone(),
                expected: fault.expected(),
                split: split_of(Some(&s)),
                scene: Some(cap),
                alt_kind: "scene",
                boilerplate: false,
                form: "fault",
                format,
                width: size.map(|(w, _)| w),
                height: size.map(|(_, h)| h),
                orientation: 1,
                fault: Some(fault.name()),
            });
            ctx.position += 1;
        }
        ctx.html.push_str("</body>\n</html>\n");
        self.static_text(&ctx.path, "text/html; charset=utf-8", ctx.html.into_bytes());
    }
}

fn split_of(scene: Option<&Scene>) -> &'static str {
    match scene {
        Some(s) if scene::is_held_out(s) => "heldout",
        Some(_) => "train",
        None => "none",
    }
}

/// The (alt kind, form) pairs of page `i`: page 5 has every alt kind, page 6 every form, the
/// others 4–7 random ones.
fn page_images(i: usize, rng: &mut ChaCha8Rng) -> Vec<(AltKind, Form)> {
    match i {
        5 => ALT_KINDS.iter().map(|(k, _)| (*k, Form::SrcRoot)).collect(),
        6 => FORMS.iter().map(|(f, _)| (AltKind::Scene, *f)).collect(),
        _ => (0..rng.random_range(4..=7))
            .map(|_| (weighted(rng, &ALT_KINDS), weighted(rng, &FORMS)))
            .collect(),
    }
}

fn page_head(ctx: &PageCtx) -> String {
    let meta = match ctx.charset {
        Charset::Utf8 => "<meta charset=\"utf-8\">",
        _ => "<meta charset=\"windows-1252\">",
    };
    let base = ctx
        .base_dir
        .as_ref()
        .map(|d| format!("<base href=\"{d}\">"))
        .unwrap_or_default();
    let (html, head, title) = if ctx.upper {
        ("<HTML LANG=\"en\">", "HEAD", "TITLE")
    } else {
        ("<html lang=\"en\">", "head", "title")
    };
    format!(
        "<!DOCTYPE html>\n{html}\n<{head}>{meta}<{title}>{}</{title}>{base}</{head}>\n<body>\n<h1>{}</h1>\n\
         <p>Pictures of shapes, colours &amp; textures.</p>\n",
        escape(&ctx.title),
        escape(&ctx.title)
    )
}

/// The `<img>` (or `<picture>`) markup for `form`, and any query string the URL carries.
fn img_tag(
    form: Form,
    path: &str,
    small: &str,
    base: &str,
    ctx: &PageCtx,
    alt: &str,
    rng: &mut ChaCha8Rng,
) -> (String, &'static str) {
    let tag = match form {
        Form::SrcRoot | Form::Private | Form::PrivateAllowed | Form::Missing => {
            format!("<img src=\"{path}\" alt=\"{alt}\" loading=\"lazy\">")
        }
        Form::SrcRelative if ctx.path == "/" => format!("<img src=\"{}\" alt=\"{alt}\">", &path[1..]),
        Form::SrcRelative => format!("<img alt=\"{alt}\" src=\"..{path}\">"),
        Form::SrcAbsolute => format!("<img src=\"{base}{path}\" alt=\"{alt}\" width=\"300\">"),
        Form::SrcQuery => {
            return (
                format!("<img src=\"{path}?w=640&amp;v=2\" alt=\"{alt}\">"),
                "?w=640&v=2",
            )
        }
        Form::SrcsetW if rng.random_bool(0.5) => format!(
            "<img src=\"{small}\" srcset=\"{path} 640w, {small} 160w\" sizes=\"50vw\" alt=\"{alt}\">"
        ),
        Form::SrcsetW => format!(
            "<img src=\"{small}\" srcset=\"{small} 160w,{path} 640w\" alt=\"{alt}\">"
        ),
        Form::SrcsetX => {
            format!("<img src=\"{small}\" srcset=\"{small} 1x, {path} 2x\" alt=\"{alt}\">")
        }
        Form::DataSrc => format!(
            "<img class=\"lazy\" src=\"{PLACEHOLDER}\" data-src=\"{path}\" alt=\"{alt}\">"
        ),
        Form::DataOriginal => format!(
            "<img class=\"lazy\" src=\"{PLACEHOLDER}\" data-original=\"{path}\" alt=\"{alt}\">"
        ),
        Form::Picture => format!(
            "<picture><source type=\"image/webp\" srcset=\"{path}\"><img src=\"{PLACEHOLDER}\" alt=\"{alt}\"></picture>"
        ),
        Form::Uppercase => format!("<IMG SRC=\"{path}\" ALT=\"{alt}\">"),
        Form::BaseHref => format!("<img src=\"{}\" alt=\"{alt}\">", path.rsplit('/').next().unwrap_or(path)),
    };
    (tag, "")
}

/// The alt attribute's HTML (escaped as written in the page) and the decoded, collapsed text.
fn alt_text(plan: &ImgPlan, id: u64, charset: Charset, rng: &mut ChaCha8Rng) -> (String, String) {
    let mut cap = scene::caption(&plan.scene);
    if plan.kind == AltKind::Scene && rng.random_bool(0.2) {
        cap = format!("{}{}.", cap[..1].to_uppercase(), &cap[1..]);
    }
    match plan.kind {
        AltKind::Scene => (escape(&cap), cap),
        AltKind::Entity => (entity_encode(&cap), cap),
        AltKind::Whitespace => {
            let seps = [" ", "  ", "\n", "\t ", " \r\n  "];
            let mut html = String::from(" ");
            for (k, w) in cap.split(' ').enumerate() {
                if k > 0 {
                    html.push_str(seps[rng.random_range(0..seps.len())]);
                }
                html.push_str(w);
            }
            html.push('\n');
            (html, cap)
        }
        AltKind::NonAscii => {
            let text = match charset {
                Charset::Utf8 => format!("{cap} — café à 東京 🌸"),
                _ => format!("{cap} — café à Zürich ©"),
            };
            (escape(&text), text)
        }
        AltKind::Long => {
            let text = format!("{cap}. {LONG_TAIL}");
            (escape(&text), text)
        }
        AltKind::Text => {
            let text = FREE_TEXT[rng.random_range(0..FREE_TEXT.len())].to_string();
            (escape(&text), text)
        }
        AltKind::Decorative => {
            let text = match rng.random_range(0..DECORATIVE.len() + 2) {
                k if k < DECORATIVE.len() => DECORATIVE[k].to_string(),
                k if k == DECORATIVE.len() => format!("IMG_{:04}.JPG", id % 10_000),
                _ => format!("{}", 1000 + id),
            };
            (escape(&text), text)
        }
        AltKind::Empty => (String::new(), String::new()),
    }
}

/// Escapes text for an HTML attribute or text node.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes every other space as `&#32;`, each `o` as `&#x6F;` and each `e` as `&#101;`, so only
/// an extractor that decodes character references recovers the caption.
fn entity_encode(s: &str) -> String {
    let mut out = String::new();
    let mut spaces = 0;
    for c in s.chars() {
        match c {
            ' ' => {
                spaces += 1;
                out.push_str(if spaces % 2 == 0 { "&#32;" } else { " " });
            }
            'o' => out.push_str("&#x6F;"),
            'e' => out.push_str("&#101;"),
            _ => out.push_str(&escape(&c.to_string())),
        }
    }
    out
}

/// Encodes text as windows-1252 (the characters this site uses all have a code point there).
fn encode_cp1252(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            '\u{00}'..='\u{7f}' | '\u{a0}'..='\u{ff}' => c as u8,
            '€' => 0x80,
            '–' => 0x96,
            '—' => 0x97,
            '’' => 0x92,
            _ => b'?',
        })
        .collect()
}

//! The adversarial area (`--faults`): servers that drip, hang, reset, lie about sizes and types,
//! loop, redirect outside the allow-list, rate-limit and opt out. Each behaviour ends by itself
//! within 60 s, so a client's bounded run time is testable, and each states the outcome a correct
//! client must reach.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::images::{self, Format};
use super::scene::{self, Scene};
use super::server::{Response, State};

/// One fault-area behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A JPEG sent one byte per 250 ms; the connection closes after 50 s, unfinished.
    SlowDrip,
    /// Reads the request, answers nothing, closes after 30 s.
    Hang,
    /// Sends headers and part of the body, then resets the connection (RST).
    Reset,
    /// Declares a Content-Length, sends half of it, closes.
    TruncatedBody,
    /// A body with no length that never ends (stops after 50 s or 4 GiB).
    EndlessBody,
    /// `Content-Encoding: gzip` that inflates to 128 MiB of zeros.
    GzipBomb,
    /// Two URLs redirecting to each other forever.
    RedirectLoop,
    /// A redirect to `http://127.0.0.2:PORT/probe.jpg`, outside the 127.0.0.1/32 allow-list.
    RedirectOutside,
    /// Odd-numbered requests get 429 with `Retry-After: 1`, even ones the image.
    RetryAfter,
    /// Two 500s, then the image, cyclically (request n succeeds when n % 3 == 0).
    ServerErrorTwice,
    /// A valid JPEG labelled `text/html` (formats come from magic bytes, not headers).
    ImageAsHtml,
    /// An HTML page labelled `image/jpeg`.
    HtmlAsImage,
    /// A valid JPEG with `X-Robots-Tag: noai`.
    NoAi,
    /// A valid JPEG with `X-Robots-Tag: otherbot: noai` (addressed to another agent).
    NoAiOtherBot,
    /// A JPEG signature followed by noise.
    CorruptImage,
    /// The first 40% of a PNG, with a correct Content-Length.
    TruncatedImage,
    /// A small PNG declaring 50,000 × 50,000 pixels.
    DecompressionBomb,
}

impl Fault {
    /// Every fault, in manifest order.
    pub const ALL: [Fault; 17] = [
        Fault::SlowDrip,
        Fault::Hang,
        Fault::Reset,
        Fault::TruncatedBody,
        Fault::EndlessBody,
        Fault::GzipBomb,
        Fault::RedirectLoop,
        Fault::RedirectOutside,
        Fault::RetryAfter,
        Fault::ServerErrorTwice,
        Fault::ImageAsHtml,
        Fault::HtmlAsImage,
        Fault::NoAi,
        Fault::NoAiOtherBot,
        Fault::CorruptImage,
        Fault::TruncatedImage,
        Fault::DecompressionBomb,
    ];

    /// The manifest's `fault` value and the `/stats` key.
    pub fn name(self) -> &'static str {
        match self {
            Fault::SlowDrip => "slow_drip",
            Fault::Hang => "hang",
            Fault::Reset => "reset",
            Fault::TruncatedBody => "truncated_body",
            Fault::EndlessBody => "endless_body",
            Fault::GzipBomb => "gzip_bomb",
            Fault::RedirectLoop => "redirect_loop",
            Fault::RedirectOutside => "redirect_outside",
            Fault::RetryAfter => "retry_after",
            Fault::ServerErrorTwice => "server_error_twice",
            Fault::ImageAsHtml => "image_as_html",
            Fault::HtmlAsImage => "html_as_image",
            Fault::NoAi => "noai",
            Fault::NoAiOtherBot => "noai_other_bot",
            Fault::CorruptImage => "corrupt_image",
            Fault::TruncatedImage => "truncated_image",
            Fault::DecompressionBomb => "decompression_bomb",
        }
    }

    /// The URL paths serving this fault; the first is the one the manifest lists.
    pub fn paths(self) -> &'static [&'static str] {
        match self {
            Fault::SlowDrip => &["/faults/slow-drip.jpg"],
            Fault::Hang => &["/faults/hang.jpg"],
            Fault::Reset => &["/faults/reset.jpg"],
            Fault::TruncatedBody => &["/faults/truncated-body.jpg"],
            Fault::EndlessBody => &["/faults/endless.jpg"],
            Fault::GzipBomb => &["/faults/gzip-bomb.png"],
            Fault::RedirectLoop => &["/faults/loop-a.jpg", "/faults/loop-b.jpg"],
            Fault::RedirectOutside => &["/faults/redirect-outside.jpg"],
            Fault::RetryAfter => &["/faults/retry-after.jpg"],
            Fault::ServerErrorTwice => &["/faults/error-twice.jpg"],
            Fault::ImageAsHtml => &["/faults/image-as-html.jpg"],
            Fault::HtmlAsImage => &["/faults/html-as-image.jpg"],
            Fault::NoAi => &["/faults/noai.jpg"],
            Fault::NoAiOtherBot => &["/faults/noai-other-bot.jpg"],
            Fault::CorruptImage => &["/faults/corrupt.jpg"],
            Fault::TruncatedImage => &["/faults/truncated.png"],
            Fault::DecompressionBomb => &["/faults/bomb.png"],
        }
    }

    /// The status a correct `wit download` with default flags records for this URL.
    pub fn expected(self) -> &'static str {
        match self {
            Fault::RetryAfter
            | Fault::ServerErrorTwice
            | Fault::ImageAsHtml
            | Fault::NoAiOtherBot => "success",
            Fault::NoAi => "opted_out",
            Fault::HtmlAsImage
            | Fault::CorruptImage
            | Fault::TruncatedImage
            | Fault::DecompressionBomb => "failed_to_resize",
            _ => "failed_to_download",
        }
    }

    /// The manifest's (format, display size) of what a successful client receives.
    pub(crate) fn served_image(self) -> (&'static str, Option<(i32, i32)>) {
        match self.expected() {
            "success" | "opted_out" => ("jpeg", Some((FAULT_SIDE as i32, FAULT_SIDE as i32))),
            _ => ("none", None),
        }
    }
}

const FAULT_SIDE: u32 = 128;
const HANG: Duration = Duration::from_secs(30);
const DRIP_FOR: Duration = Duration::from_secs(50);

/// The bytes the faults serve, made once at start (the gzip bomb on first request).
pub(crate) struct FaultAssets {
    jpeg: Bytes,
    png: Bytes,
    html: Bytes,
    corrupt: Bytes,
    bomb: Bytes,
    gzip_bomb: OnceLock<Bytes>,
    probe_base: String,
}

impl FaultAssets {
    /// Renders the fault images for `seed`; `probe_base` is where [`Fault::RedirectOutside`] points.
    pub(crate) fn new(seed: u64, probe_base: String) -> FaultAssets {
        let mut rng = super::site::rng_for(seed, "fault-assets", 0);
        let img = scene::render(&Scene::random(&mut rng, true), FAULT_SIDE, FAULT_SIDE, seed);
        FaultAssets {
            jpeg: Bytes::from(images::encode(&img, Format::Jpeg)),
            png: Bytes::from(images::encode(&img, Format::Png)),
            html: Bytes::from_static(
                b"<!DOCTYPE html><html><head><title>Not an image</title></head><body>hello</body></html>\n",
            ),
            corrupt: Bytes::from(images::corrupt_jpeg(seed)),
            bomb: Bytes::from(images::png_bomb(50_000, 50_000)),
            gzip_bomb: OnceLock::new(),
            probe_base,
        }
    }

    /// The JPEG the 127.0.0.2 probe answers with (a client that gets there records success,
    /// which its test then catches).
    pub(crate) fn probe_jpeg(&self) -> Bytes {
        self.jpeg.clone()
    }

    fn gzip_bomb(&self) -> Bytes {
        self.gzip_bomb
            .get_or_init(|| {
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..128 {
                    z.write_all(&zeros).expect("in-memory gzip");
                }
                Bytes::from(z.finish().expect("in-memory gzip"))
            })
            .clone()
    }
}

/// What a fault handler did: a normal response for the server to write, or the connection was
/// handled (and must now be closed).
pub(crate) enum Reply {
    /// Write this response; keep-alive as usual.
    Full(Response),
    /// The handler wrote (or withheld) everything itself; close the connection.
    Done,
}

/// Serves `fault` for a request to `path` that is its `hit`-th (1-based).
pub(crate) async fn respond(
    fault: Fault,
    path: &str,
    hit: u64,
    state: &State,
    stream: &mut TcpStream,
) -> Reply {
    let a = &state.fault_assets;
    let image = |body: &Bytes| Response::ok("image/jpeg", body.clone());
    match fault {
        Fault::SlowDrip => {
            drip(stream, &a.jpeg).await;
            Reply::Done
        }
        Fault::Hang => {
            tokio::time::sleep(HANG).await;
            Reply::Done
        }
        Fault::Reset => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                a.jpeg.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&a.jpeg[..a.jpeg.len() / 4]).await;
            let _ = stream.flush().await;
            let _ = stream.set_zero_linger();
            Reply::Done
        }
        Fault::TruncatedBody => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                a.jpeg.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&a.jpeg[..a.jpeg.len() / 2]).await;
            let _ = stream.shutdown().await;
            Reply::Done
        }
        Fault::EndlessBody => {
            endless(stream).await;
            Reply::Done
        }
        Fault::GzipBomb => Reply::Full(
            Response::ok("image/png", a.gzip_bomb()).header("Content-Encoding", "gzip".into()),
        ),
        Fault::RedirectLoop => {
            let to = if path.ends_with("-a.jpg") {
                Fault::RedirectLoop.paths()[1]
            } else {
                Fault::RedirectLoop.paths()[0]
            };
            Reply::Full(Response::redirect(to.to_string()))
        }
        Fault::RedirectOutside => {
            Reply::Full(Response::redirect(format!("{}/probe.jpg", a.probe_base)))
        }
        Fault::RetryAfter if !hit.is_multiple_of(2) => {
            Reply::Full(Response::status(429, "slow down\n").header("Retry-After", "1".into()))
        }
        Fault::ServerErrorTwice if !hit.is_multiple_of(3) => {
            Reply::Full(Response::status(500, "try again\n"))
        }
        Fault::RetryAfter | Fault::ServerErrorTwice => Reply::Full(image(&a.jpeg)),
        Fault::ImageAsHtml => Reply::Full(Response::ok("text/html; charset=utf-8", a.jpeg.clone())),
        Fault::HtmlAsImage => Reply::Full(image(&a.html)),
        Fault::NoAi => Reply::Full(image(&a.jpeg).header("X-Robots-Tag", "noai".into())),
        Fault::NoAiOtherBot => {
            Reply::Full(image(&a.jpeg).header("X-Robots-Tag", "otherbot: noai, noimageai".into()))
        }
        Fault::CorruptImage => Reply::Full(image(&a.corrupt)),
        Fault::TruncatedImage => Reply::Full(Response::ok(
            "image/png",
            Bytes::from(images::truncated_png(&a.png)),
        )),
        Fault::DecompressionBomb => Reply::Full(Response::ok("image/png", a.bomb.clone())),
    }
}

async fn drip(stream: &mut TcpStream, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let start = Instant::now();
    for b in body {
        if start.elapsed() >= DRIP_FOR || stream.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn endless(stream: &mut TcpStream) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut chunk = vec![0x55u8; 64 * 1024];
    chunk[..4].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < DRIP_FOR && sent < 4 << 30 {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len() as u64;
    }
}

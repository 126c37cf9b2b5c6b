//! The hostile-input harness: a loopback HTTP server that serves what a test generated (any
//! status, headers and body, or a body that stalls), and a runner that starts the real `wit`
//! binary under an address-space and CPU cap and reports its peak RSS and wall time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One response the server gives for a path.
#[derive(Clone, Debug)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send this many body bytes, then hold the connection open without sending more.
    pub stall_after: Option<usize>,
}

impl Route {
    /// A 200 with the given `Content-Type` and body.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Route {
        Route {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            stall_after: None,
        }
    }

    /// A bodiless response with `status`.
    pub fn status(status: u16) -> Route {
        Route {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            stall_after: None,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A server on 127.0.0.1 serving fixed routes (404 elsewhere), one thread per connection, each
/// connection closed after one response. Stops when dropped.
pub struct LoopbackServer {
    pub base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    port: u16,
}

impl LoopbackServer {
    pub fn start(routes: HashMap<String, Route>) -> LoopbackServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let routes = Arc::new(routes);
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (routes, hits, stop) = (routes.clone(), hits.clone(), stop.clone());
                    std::thread::spawn(move || serve(conn, &routes, &hits, &stop));
                }
            })
        };
        LoopbackServer {
            base: format!("http://127.0.0.1:{port}"),
            hits,
            stop,
            accept: Some(accept),
            port,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// How many requests reached `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut conn: TcpStream,
    routes: &HashMap<String, Route>,
    hits: &Mutex<HashMap<String, usize>>,
    stop: &AtomicBool,
) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let route = routes
        .get(&path)
        .cloned()
        .unwrap_or_else(|| Route::status(404));
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", route.status);
    for (k, v) in &route.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", route.body.len()));
    if conn.write_all(out.as_bytes()).is_err() {
        return;
    }
    let sent = route
        .stall_after
        .unwrap_or(route.body.len())
        .min(route.body.len());
    if conn.write_all(&route.body[..sent]).is_err() {
        return;
    }
    if route.stall_after.is_some() {
        // Hold the connection open, sending nothing, until the client gives up or the test ends.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            if let Ok(0) = conn.read(&mut byte) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What a capped run of `wit` did.
pub struct CappedRun {
    pub output: Output,
    /// Peak resident set size of the process (its own, from `wait4`'s rusage).
    pub peak_rss_bytes: u64,
    pub wall: Duration,
}

impl CappedRun {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics unless the run exited 0, stayed under `max_rss` and finished within `max_wall`.
    pub fn assert_bounded(&self, max_rss: u64, max_wall: Duration) {
        assert!(
            self.output.status.success(),
            "wit failed ({:?}):\n{}",
            self.output.status,
            self.stderr()
        );
        assert!(
            self.peak_rss_bytes <= max_rss,
            "peak RSS {} MB > {} MB",
            self.peak_rss_bytes >> 20,
            max_rss >> 20
        );
        assert!(self.wall <= max_wall, "took {:?} > {max_wall:?}", self.wall);
    }
}

/// Runs the `wit` binary with `args` under an address-space cap of `address_space` bytes and a
/// CPU-time cap of `cpu_seconds` (`setrlimit` in the child, as `prlimit` does), returning its
/// output, peak RSS and wall time. An allocation past the cap fails inside wit, so a run that
/// would balloon aborts instead of passing.
pub fn wit_capped(args: &[&str], address_space: u64, cpu_seconds: u64) -> CappedRun {
    wit_capped_fed(args, address_space, cpu_seconds, None)
}

/// What a test writes to wit's standard input, on its own thread, while wit runs.
pub type Feed = Box<dyn FnOnce(&mut dyn Write) + Send>;

/// [`wit_capped`] with standard input fed by `feed` (a list on `/dev/stdin`, say).
pub fn wit_capped_fed(
    args: &[&str],
    address_space: u64,
    cpu_seconds: u64,
    feed: Option<Feed>,
) -> CappedRun {
    let mut cmd = Command::new(super::wit_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = |resource, value: u64| {
                let rl = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            limit(libc::RLIMIT_AS, address_space)?;
            limit(libc::RLIMIT_CPU, cpu_seconds)
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("the wit binary starts");
    let pid = child.id() as libc::pid_t;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let writer = feed.map(|feed| {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || feed(&mut stdin))
    });
    let mut status = 0;
    // SAFETY: plain FFI; `rusage` is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 on wit");
    let wall = started.elapsed();
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    // Reaped by `wait4` above; the handle only remains to be dropped.
    drop(child);
    use std::os::unix::process::ExitStatusExt;
    CappedRun {
        output: Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        },
        peak_rss_bytes: (usage.ru_maxrss as u64) * 1024,
        wall,
    }
}

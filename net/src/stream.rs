//! Long bodies (shards, archives, indexes) as a blocking `Read`: the async client runs on a
//! thread of its own, body chunks cross a bounded channel, and a broken or stalled body is
//! resumed with `Range` from the byte it stopped at.
//!
//! Why the async client on a small runtime rather than `reqwest::blocking`: the blocking client
//! has no read timeout (only a total one, wrong for a multi-GB shard), and this way the loader,
//! `wit warc` and the fetcher share one client builder, one resolver and one retry policy.

use crate::http::{client_builder, send_following, HttpConfig, NetError};
use bytes::Bytes;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use url::Url;

/// Body chunks buffered between the network thread and the reader: the back-pressure bound on
/// memory per open stream (a chunk is at most a few tens of KiB).
const CHANNEL_CHUNKS: usize = 16;

/// Opens `url` for sequential reading: the SSRF guard and checked redirects on every hop, the
/// config's timeouts and retries, `Range` resumes (at most `cfg.retries` in all) after the body
/// breaks, and an error once more than `max_bytes` arrived (`None`: no cap, for shards and
/// archives whose size the caller bounds by reading).
pub fn open_blocking(
    cfg: HttpConfig,
    url: Url,
    max_bytes: Option<u64>,
) -> io::Result<Box<dyn Read + Send>> {
    let (chunk_tx, chunk_rx) = sync_channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (ready_tx, ready_rx) = sync_channel::<io::Result<()>>(1);
    std::thread::Builder::new()
        .name("wit-net-stream".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(rt) => rt,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            runtime.block_on(pump(cfg, url, max_bytes, ready_tx, chunk_tx));
        })?;
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the download thread ended early"))??;
    Ok(Box::new(ChannelReader {
        rx: chunk_rx,
        current: Bytes::new(),
    }))
}

fn to_io(url: &Url, e: NetError) -> io::Error {
    let kind = match e {
        NetError::Blocked(_) | NetError::UnsupportedScheme(_) => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("GET {url}: {e}"))
}

/// Sends the request, reports readiness, then forwards the body, resuming after breaks.
async fn pump(
    cfg: HttpConfig,
    url: Url,
    max_bytes: Option<u64>,
    ready: SyncSender<io::Result<()>>,
    tx: SyncSender<io::Result<Bytes>>,
) {
    let client = match client_builder(&cfg).build() {
        Ok(c) => c,
        Err(e) => {
            let err = NetError::Client(e.to_string());
            return drop(ready.send(Err(to_io(&url, err))));
        }
    };
    let mut response = match send_following(&client, &cfg, &url, 0).await {
        Ok(r) => r,
        Err(e) => return drop(ready.send(Err(to_io(&url, e)))),
    };
    drop(ready.send(Ok(())));
    let mut offset = 0u64;
    let mut skip = 0u64;
    let mut resumes = 0;
    loop {
        let item = match response.chunk().await {
            Ok(None) => return,
            Ok(Some(mut chunk)) => {
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                let _ = chunk.split_to(dropped as usize);
                offset += chunk.len() as u64;
                match max_bytes {
                    Some(max) if offset > max => Err(io::Error::other(format!(
                        "GET {url}: body larger than {max} bytes"
                    ))),
                    _ => Ok(chunk),
                }
            }
            Err(e) if resumes < cfg.retries => {
                resumes += 1;
                tracing::debug!(%url, offset, error = %e, "resuming the body with Range");
                match send_following(&client, &cfg, &url, offset).await {
                    Ok(r) => {
                        // A server that ignores Range sends the whole body again.
                        skip = if r.status().as_u16() == 206 {
                            0
                        } else {
                            offset
                        };
                        response = r;
                        continue;
                    }
                    Err(e) => Err(to_io(&url, e)),
                }
            }
            Err(e) => Err(to_io(&url, NetError::from_reqwest(&e))),
        };
        let failed = item.is_err();
        // The channel is bounded: blocking this dedicated thread is the back-pressure that
        // keeps memory flat.
        if tx.send(item).is_err() || failed {
            return;
        }
    }
}

/// A blocking reader over body chunks arriving on a channel.
struct ChannelReader {
    rx: Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = self.current.len().min(out.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetPolicy;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// Serves `body` once per connection; the first connection stalls after `stall_at` bytes.
    fn flaky_server(body: Vec<u8>, stall_at: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut head = [0u8; 4096];
                let len = io::Read::read(&mut stream, &mut head).unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..len]).to_lowercase();
                let from = head
                    .split("range: bytes=")
                    .nth(1)
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0);
                let part = &body[from..];
                let status = if from > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let range = format!(
                    "Content-Range: bytes {from}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
                    part.len(),
                    if from > 0 { range.as_str() } else { "" }
                );
                let _ = stream.write_all(head.as_bytes());
                if n == 0 {
                    let _ = stream.write_all(&part[..stall_at]);
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(30));
                        drop(stream);
                    });
                } else {
                    let _ = stream.write_all(part);
                }
            }
        });
        base
    }

    fn cfg() -> HttpConfig {
        HttpConfig {
            read_timeout: Duration::from_millis(300),
            ..HttpConfig::new(NetPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]))
        }
    }

    #[test]
    fn a_stalled_body_resumes_with_range() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let base = flaky_server(body.clone(), 70_000);
        let url = Url::parse(&format!("{base}/shard.tar")).unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        open_blocking(cfg(), url, None)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, body);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_stalled_body_without_retries_fails_in_bounded_time() {
        let base = flaky_server(vec![7u8; 100_000], 10);
        let url = Url::parse(&format!("{base}/shard.tar")).unwrap();
        let start = Instant::now();
        let cfg = HttpConfig {
            retries: 0,
            ..cfg()
        };
        let err = open_blocking(cfg, url, None)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn bodies_over_the_cap_and_refused_targets_fail() {
        let base = flaky_server(vec![7u8; 100_000], 100_000);
        let url = Url::parse(&format!("{base}/index.json")).unwrap();
        let err = open_blocking(cfg(), url, Some(1000))
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("larger than 1000"), "{err}");
        let metadata = Url::parse("http://169.254.169.254/latest").unwrap();
        let err = open_blocking(cfg(), metadata, None).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }
}

//! The only HTTP client in the project (IdP discovery, JWKS and consume;
//! the release manifest and binary of `escapes update`).
//!
//! Hardened for a setuid or PAM context: the caller's environment reaches
//! nothing (no proxy from `*_PROXY`, roots from the root-owned `ca_bundle`
//! or the compiled-in WebPKI set, never `SSL_CERT_FILE`), no redirects are
//! followed, one total deadline covers each request, bodies are capped at
//! 1 MiB ([`Client::download`] streams larger bodies to a writer under its
//! own cap), no connection is pooled, and name resolution runs on the
//! caller's own thread: no thread outlives a request.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use sha2::{Digest, Sha256};

use crate::error::{Denial, Kind, Step};
use crate::trust;

/// Largest response body read from the IdP.
pub const MAX_BODY: u64 = 1024 * 1024;

/// ureq's input buffer, which also bounds an answer's head (status line
/// and headers).
const INPUT_BUFFER: usize = 32 * 1024;

/// A response: status and (capped) body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Resolves on the calling thread (ureq's default spawns a thread per
/// lookup when a deadline is set). IP literals are not resolved at all.
#[derive(Debug)]
struct CallerThreadResolver;

impl Resolver for CallerThreadResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut out = self.empty();
        if let Ok(ip) = bare.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        for addr in (bare, port).to_socket_addrs()?.take(16) {
            out.push(addr);
        }
        if out.is_empty() {
            Err(ureq::Error::HostNotFound)
        } else {
            Ok(out)
        }
    }
}

/// An HTTP client for one verification. Dropping it closes everything.
///
/// The timeout given to [`Client::new`] is one deadline for every request
/// this client makes (JWKS and consume together), so a login never waits
/// longer than `[http] timeout` on the network. Name resolution of a host
/// name (not an IP literal) is bounded by the resolver's own settings.
pub struct Client {
    agent: ureq::Agent,
    deadline: Instant,
}

impl Client {
    /// Build a client with a total deadline per request. `ca_bundle`, when
    /// set, must be a trusted file (owner `owner`, not writable by others).
    pub fn new(timeout: Duration, ca_bundle: Option<&Path>, owner: u32) -> Result<Client, Denial> {
        let roots = match ca_bundle {
            None => RootCerts::WebPki,
            Some(path) => {
                let pem = trust::read_trusted(path, owner).map_err(|e| {
                    Denial::new(Step::Config, Kind::Config, format!("[tls] ca_bundle {e}"))
                })?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
                        Ok(_) => {}
                        Err(_) => {
                            return Err(Denial::new(
                                Step::Config,
                                Kind::Config,
                                format!(
                                    "[tls] ca_bundle {}: not a PEM certificate bundle",
                                    path.display()
                                ),
                            ));
                        }
                    }
                }
                if certs.is_empty() {
                    return Err(Denial::new(
                        Step::Config,
                        Kind::Config,
                        format!("[tls] ca_bundle {}: holds no certificate", path.display()),
                    ));
                }
                RootCerts::new_with_certs(&certs)
            }
        };
        let config = ureq::Agent::config_builder()
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            // ureq fills its buffers with zeros up front; its 128 KiB
            // defaults cost 64 page faults per request in this short-lived
            // process. An IdP's answer head is a few hundred bytes, our
            // request head and body are small (the JWT), and bodies stream
            // through the buffer, so 32 KiB in / 16 KiB out is ample; a
            // longer answer head is refused, never truncated.
            .input_buffer_size(INPUT_BUFFER)
            .max_response_header_size(INPUT_BUFFER)
            .output_buffer_size(16 * 1024)
            .user_agent(concat!("escapes/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build();
        let agent = ureq::Agent::with_parts(config, DefaultConnector::new(), CallerThreadResolver);
        Ok(Client {
            agent,
            deadline: Instant::now() + timeout,
        })
    }

    /// Time left before the deadline; `Err` once it has passed.
    fn remaining(&self) -> Result<Duration, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err("did not answer in time".into());
        }
        Ok(left)
    }

    /// GET `url`. `Err` is a message safe to show (no token inside).
    pub fn get(&self, url: &str) -> Result<Response, String> {
        let left = self.remaining()?;
        let resp = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .config()
            .timeout_global(Some(left))
            .build()
            .call()
            .map_err(describe)?;
        read(resp)
    }

    /// POST with an empty body and a bearer token. The token goes into the
    /// Authorization header only and never into an error.
    pub fn post_bearer(&self, url: &str, bearer: &str) -> Result<Response, String> {
        let left = self.remaining()?;
        let resp = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .header("Authorization", format!("Bearer {bearer}"))
            .config()
            .timeout_global(Some(left))
            .build()
            .send_empty()
            .map_err(describe)?;
        read(resp)
    }
}

/// An answer of [`Client::call`]: status, capped body, and the headers
/// the request flow needs (cache validator and rate-limit hint).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// `ETag`, when present, printable ASCII and at most 256 bytes.
    pub etag: Option<String>,
    /// `Retry-After` in seconds, when present in its delta-seconds form.
    pub retry_after: Option<u64>,
}

/// The methods [`Client::call`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Client {
    /// Start a new deadline of `timeout` for the requests that follow (a
    /// long wait makes many requests; each gets the whole timeout).
    pub fn renew(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
    }

    /// One JSON request: `GET` or `POST` (with `json` as the body, or an
    /// empty one), an optional bearer token (Authorization header only,
    /// never in an error) and an optional `If-None-Match`. Same hardening
    /// as every other request of this client; a redirect is an error.
    pub fn call(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        json: Option<&[u8]>,
        if_none_match: Option<&str>,
    ) -> Result<Reply, String> {
        let left = self.remaining()?;
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let resp = match method {
            Method::Get => {
                let mut rb = self.agent.get(url).header("Accept", "application/json");
                if let Some(a) = &auth {
                    rb = rb.header("Authorization", a);
                }
                if let Some(tag) = if_none_match {
                    rb = rb.header("If-None-Match", tag);
                }
                rb.config().timeout_global(Some(left)).build().call()
            }
            Method::Post => {
                let mut rb = self
                    .agent
                    .post(url)
                    .header("Accept", "application/json")
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    rb = rb.header("Authorization", a);
                }
                let rb = rb.config().timeout_global(Some(left)).build();
                match json {
                    Some(body) => rb.send(body),
                    None => rb.send_empty(),
                }
            }
        }
        .map_err(describe)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("etag").filter(|t| {
            !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| (0x20..0x7f).contains(&b))
        });
        let retry_after = header("retry-after").and_then(|v| {
            let v = v.trim();
            (!v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
        });
        // 304 answers a conditional GET: no body, and not a redirect.
        if resp.status().as_u16() == 304 && if_none_match.is_some() {
            return Ok(Reply {
                status: 304,
                body: Vec::new(),
                etag,
                retry_after,
            });
        }
        let Response { status, body } = read(resp)?;
        Ok(Reply {
            status,
            body,
            etag,
            retry_after,
        })
    }
}

/// What [`Client::download`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Download {
    /// Bytes written to the writer (the whole body).
    pub bytes: u64,
    /// Lowercase hex SHA-256 of exactly those bytes.
    pub sha256: String,
}

impl Client {
    /// GET `url` and stream the body of a 200 answer into `out`, at most
    /// `max_bytes` of it, hashing as it goes. `deadline` replaces the
    /// client's timeout for this one request and covers the whole body.
    ///
    /// Same hardening as [`Client::get`] (no proxy, no redirect, no
    /// pooling). Every failure is an `Err` with a message safe to show: a
    /// status other than 200, a body longer than `max_bytes` (announced or
    /// actual), a connection closed before the announced length, the
    /// deadline, or an error of `out` (e.g. a full disk). After an `Err`,
    /// `out` may hold part of the body: the caller throws it away.
    pub fn download(
        &self,
        url: &str,
        max_bytes: u64,
        deadline: Duration,
        out: &mut dyn Write,
    ) -> Result<Download, String> {
        let mut resp = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(deadline))
            .build()
            .header("Accept", "application/octet-stream")
            .call()
            .map_err(describe)?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            return Err(format!(
                "answered with a redirect ({status}); redirects are not followed"
            ));
        }
        if status != 200 {
            return Err(format!("answered HTTP {status}"));
        }
        let announced = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_bytes) {
            return Err(format!("download is larger than {max_bytes} bytes"));
        }
        let mut reader = resp.body_mut().as_reader();
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(body_error(&e)),
            };
            total = total.saturating_add(n as u64);
            if total > max_bytes {
                return Err(format!("download is larger than {max_bytes} bytes"));
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            out.write_all(chunk)
                .map_err(|e| format!("cannot store the download: {e}"))?;
        }
        out.flush()
            .map_err(|e| format!("cannot store the download: {e}"))?;
        if announced.is_some_and(|n| n != total) {
            return Err("the connection closed before the whole body arrived".into());
        }
        Ok(Download {
            bytes: total,
            sha256: crate::token::hex(&hasher.finalize()),
        })
    }
}

/// A body read error: ureq reports a deadline or a short body through
/// `io::Error`.
fn body_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut => "did not finish in time".into(),
        std::io::ErrorKind::UnexpectedEof => {
            "the connection closed before the whole body arrived".into()
        }
        _ => format!(
            "the download was cut off: {}",
            crate::error::sanitize(&e.to_string(), 200)
        ),
    }
}

fn read(mut resp: ureq::http::Response<ureq::Body>) -> Result<Response, String> {
    let status = resp.status().as_u16();
    if (300..400).contains(&status) {
        return Err(format!(
            "answered with a redirect ({status}); redirects are not followed"
        ));
    }
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("response body could not be read: {e}"))?;
    if body.len() as u64 > MAX_BODY {
        return Err("response body is larger than 1 MiB".into());
    }
    Ok(Response { status, body })
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "did not answer in time".into(),
        ureq::Error::HostNotFound => "host name could not be resolved".into(),
        ureq::Error::Io(io) => format!("connection failed: {}", io.kind()),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            "answered with a redirect; redirects are not followed".into()
        }
        other => format!(
            "request failed: {}",
            crate::error::sanitize(&other.to_string(), 200)
        ),
    }
}

/// `https://id.example.com` + `/path` (one trailing slash of the issuer dropped).
pub fn join(issuer: &str, path: &str) -> String {
    format!("{}{}", issuer.strip_suffix('/').unwrap_or(issuer), path)
}

/// Percent-encode one URL path segment (RFC 3986 unreserved kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grant_ids_cannot_escape_their_path_segment() {
        assert_eq!(encode_segment("../x?y#"), "..%2Fx%3Fy%23");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("3f2a-99_z.~"), "3f2a-99_z.~");
    }

    /// Serve one connection with `response` (raw bytes), then close.
    fn one_shot(response: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let h = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => break,
                    }
                }
                let _ = s.write_all(&response);
                let _ = s.flush();
            }
        });
        (format!("http://127.0.0.1:{port}/bin"), h)
    }

    fn response(len_header: Option<usize>, body: &[u8]) -> Vec<u8> {
        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n".to_vec();
        if let Some(n) = len_header {
            r.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body);
        r
    }

    fn fetch(resp: Vec<u8>, max: u64) -> (Result<Download, String>, Vec<u8>) {
        let (url, h) = one_shot(resp);
        let client = Client::new(Duration::from_secs(5), None, 0).unwrap();
        let mut out = Vec::new();
        let r = client.download(&url, max, Duration::from_secs(5), &mut out);
        let _ = h.join();
        (r, out)
    }

    #[test]
    fn download_streams_and_hashes_the_body() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (r, out) = fetch(response(Some(body.len()), &body), 1 << 20);
        assert_eq!(out, body);
        assert_eq!(
            r,
            Ok(Download {
                bytes: body.len() as u64,
                sha256: crate::token::hex(&Sha256::digest(&body)),
            })
        );
        // No Content-Length: the body ends when the connection closes.
        let (r, out) = fetch(response(None, b"abc"), 10);
        assert_eq!(r.map(|d| d.bytes), Ok(3));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn download_refuses_cut_oversized_redirected_and_unstorable_bodies() {
        // Announced 1000 bytes, 500 sent, then closed.
        let (r, _) = fetch(response(Some(1000), &[7u8; 500]), 1 << 20);
        assert!(r.as_ref().is_err_and(|e| e.contains("closed")), "{r:?}");
        // Announced more than the cap: refused before reading.
        let (r, out) = fetch(response(Some(2000), &[7u8; 2000]), 1000);
        assert!(r.as_ref().is_err_and(|e| e.contains("larger")), "{r:?}");
        assert!(out.is_empty());
        // Not announced, but more than the cap arrives.
        let (r, out) = fetch(response(None, &[7u8; 5000]), 1000);
        assert!(r.as_ref().is_err_and(|e| e.contains("larger")), "{r:?}");
        assert!(out.len() <= 1000);
        // Redirects are not followed; other statuses are errors.
        let (r, _) = fetch(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            1000,
        );
        assert!(r.as_ref().is_err_and(|e| e.contains("redirect")), "{r:?}");
        let (r, _) = fetch(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            1000,
        );
        assert!(r.as_ref().is_err_and(|e| e.contains("404")), "{r:?}");
        // A writer that fails (a full disk) fails the download.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (url, h) = one_shot(response(Some(10), b"0123456789"));
        let client = Client::new(Duration::from_secs(5), None, 0).unwrap();
        let r = client.download(&url, 100, Duration::from_secs(5), &mut Full);
        let _ = h.join();
        assert!(
            r.as_ref().is_err_and(|e| e.contains("cannot store")),
            "{r:?}"
        );
    }

    #[test]
    fn call_reads_304_etag_and_retry_after() {
        let (url, h) = one_shot(
            b"HTTP/1.1 304 Not Modified\r\nETag: W/\"pending:1\"\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        );
        let client = Client::new(Duration::from_secs(5), None, 0).unwrap();
        let r = client
            .call(Method::Get, &url, Some("b"), None, Some("W/\"pending:1\""))
            .unwrap();
        let _ = h.join();
        assert_eq!(
            (r.status, r.etag.as_deref()),
            (304, Some("W/\"pending:1\""))
        );
        // Without If-None-Match a 304 is as unexpected as any redirect.
        let (url, h) = one_shot(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n".to_vec());
        assert!(client.call(Method::Get, &url, None, None, None).is_err());
        let _ = h.join();
        let (url, h) = one_shot(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
        );
        let r = client
            .call(Method::Post, &url, None, Some(b"{}"), None)
            .unwrap();
        let _ = h.join();
        assert_eq!((r.status, r.retry_after), (429, Some(7)));
    }

    #[test]
    fn answer_heads_up_to_the_input_buffer_are_read_longer_ones_refused() {
        let head = |filler: usize| {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
            // Many headers of ~1 KiB, as a proxy in front of an IdP might add.
            let line = format!("X-Filler: {}\r\n", "f".repeat(1000));
            for _ in 0..filler / line.len() {
                r.extend_from_slice(line.as_bytes());
            }
            r.extend_from_slice(b"\r\n{}");
            r
        };
        let client = Client::new(Duration::from_secs(5), None, 0).unwrap();
        // 20 KiB of headers: more than ureq's old default would ever need
        // here, well inside our 32 KiB buffer.
        let (url, h) = one_shot(head(20 * 1024));
        let r = client.call(Method::Get, &url, None, None, None);
        let _ = h.join();
        assert_eq!(r.map(|r| (r.status, r.body)), Ok((200, b"{}".to_vec())));
        // 40 KiB: refused with an error, never cut and read as a short head.
        let (url, h) = one_shot(head(40 * 1024));
        let r = client.call(Method::Get, &url, None, None, None);
        let _ = h.join();
        assert!(r.is_err(), "{r:?}");
        const { assert!(INPUT_BUFFER < 40 * 1024) };
    }

    #[test]
    fn join_drops_one_trailing_slash() {
        assert_eq!(join("https://id/", "/x"), "https://id/x");
        assert_eq!(join("https://id", "/x"), "https://id/x");
    }
}

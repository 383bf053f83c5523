//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`, for tests.
//!
//! One request per connection (`Connection: close`), no TLS, no redirects,
//! no chunked decoding. The whole exchange (connect, write, read) is bounded
//! by one `timeout`; the response body is capped at [`MAX_RESPONSE`] bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response (head + body) this client will buffer.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Send one request and return `(status, body)`.
///
/// * `addr`: anything resolvable, e.g. `"127.0.0.1:8080"` or a `SocketAddr`.
/// * `path`: the request target, e.g. `"/api/grants/abc/consume"`.
/// * `headers`: extra request headers (`Host` and `Connection: close` are
///   always sent; `Content-Length` is added for `Some(body)` and for bodiless
///   POST/PUT/PATCH; `Content-Type: application/json` is added for a body
///   unless `headers` names a content type).
/// * `timeout`: deadline for the whole exchange; exceeding it gives
///   `ErrorKind::TimedOut`.
///
/// A connection closed before a complete status line arrives gives
/// `ErrorKind::UnexpectedEof`; an unparsable response `ErrorKind::InvalidData`.
pub fn request<A: ToSocketAddrs>(
    addr: A,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let mut stream = TcpStream::connect_timeout(&sa, timeout)?;
    stream.set_nodelay(true)?;

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {sa}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let has_ct = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    match body {
        Some(b) => {
            if !has_ct {
                head.push_str("Content-Type: application/json\r\n");
            }
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        None if matches!(method, "POST" | "PUT" | "PATCH") => {
            head.push_str("Content-Length: 0\r\n");
        }
        None => {}
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(b.as_bytes());
    }
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&out).map_err(timeout_kind)?;
    stream.flush()?;

    read_response(&mut stream, deadline)
}

/// Time left until `deadline`, or a `TimedOut` error when none is left.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"))
    } else {
        Ok(left)
    }
}

/// Socket timeouts surface as `WouldBlock` on Unix; report them as `TimedOut`.
fn timeout_kind(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "request timed out")
    } else {
        e
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn read_response(stream: &mut TcpStream, deadline: Instant) -> io::Result<(u16, String)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // (status, body start, content-length) once the head is complete.
    let mut parsed: Option<(u16, usize, Option<usize>)> = None;
    loop {
        if let Some((_, start, Some(len))) = parsed
            && buf.len() >= start + len
        {
            break;
        }
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(timeout_kind(e)),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response too large",
            ));
        }
        if parsed.is_none()
            && let Some(end) = find(&buf, b"\r\n\r\n")
        {
            parsed = Some(parse_head(&buf[..end], end + 4)?);
        }
    }
    let Some((status, start, len)) = parsed else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response head",
        ));
    };
    let end = match len {
        Some(l) if buf.len() < start + l => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-body",
            ));
        }
        Some(l) => start + l,
        None => buf.len(),
    };
    Ok((
        status,
        String::from_utf8_lossy(&buf[start..end]).into_owned(),
    ))
}

fn parse_head(head: &[u8], body_start: usize) -> io::Result<(u16, usize, Option<usize>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let text = std::str::from_utf8(head).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut content_length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| bad("bad content-length"))?,
            );
        }
    }
    Ok((status, body_start, content_length))
}

//! The only HTTP client in the project (IdP JWKS and consume).
//!
//! Hardened for a setuid or PAM context: the caller's environment reaches
//! nothing (no proxy from `*_PROXY`, roots from the root-owned `ca_bundle`
//! or the compiled-in WebPKI set, never `SSL_CERT_FILE`), no redirects are
//! followed, one total deadline covers each request, bodies are capped at
//! 1 MiB, no connection is pooled, and name resolution runs on the
//! caller's own thread: no thread outlives a request.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::error::{Denial, Kind, Step};
use crate::trust;

/// Largest response body read from the IdP.
pub const MAX_BODY: u64 = 1024 * 1024;

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
    use super::*;

    #[test]
    fn grant_ids_cannot_escape_their_path_segment() {
        assert_eq!(encode_segment("../x?y#"), "..%2Fx%3Fy%23");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("3f2a-99_z.~"), "3f2a-99_z.~");
    }

    #[test]
    fn join_drops_one_trailing_slash() {
        assert_eq!(join("https://id/", "/x"), "https://id/x");
        assert_eq!(join("https://id", "/x"), "https://id/x");
    }
}

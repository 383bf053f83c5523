//! Test support for escapes and pam_openape: an in-process OpenApe IdP test
//! double, a tiny blocking HTTP client, and the harness of the root-only
//! end-to-end suites (sandbox, test user, runner).

pub mod harness;
pub mod http_client;
pub mod idp;
pub mod sudo_ns;

//! Test support for escapes and pam_openape: an in-process OpenApe IdP test
//! double and a tiny blocking HTTP client.

pub mod http_client;
pub mod idp;

//! OpenApe grant verification core and the `pam_openape` PAM module.
//!
//! Every check lives here, once; `escapes` and the PAM hooks only gather
//! inputs (token, caller, target user, argv) and act on the verdict.
//! `unsafe` is not allowed in this crate outside the PAM FFI module.

#![deny(unsafe_code)]

pub mod audit;
pub mod command;
pub mod config;
pub mod error;
/// The fuzz harness (a fixed, public test signing key and a configuration
/// that trusts it): built only with the non-default `fuzzing` feature, for
/// the fuzz crate and the corpus replay, never into a shipped binary.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod invocation;
pub mod jwks;
pub mod pam;
pub mod request;
pub mod time;
pub mod token;
pub mod trust;
pub mod users;
pub mod verify;

#[cfg(test)]
mod testutil;

pub use error::{Denial, Kind, Step};

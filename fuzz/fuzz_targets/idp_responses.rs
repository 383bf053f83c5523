//! cargo-fuzz target `idp_responses`: see pam_openape::fuzzing::idp_responses for the input
//! format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pam_openape::fuzzing::idp_responses(data));

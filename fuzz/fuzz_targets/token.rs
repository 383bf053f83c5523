//! cargo-fuzz target `token`: see pam_openape::fuzzing::token for the input
//! format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pam_openape::fuzzing::token(data));

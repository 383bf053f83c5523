//! cargo-fuzz target `config`: see pam_openape::fuzzing::config for the input
//! format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pam_openape::fuzzing::config(data));

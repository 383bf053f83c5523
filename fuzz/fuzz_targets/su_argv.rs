//! cargo-fuzz target `su_argv`: see pam_openape::fuzzing::su_argv for the input
//! format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pam_openape::fuzzing::su_argv(data));

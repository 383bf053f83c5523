//! cargo-fuzz target `sudo_argv`: see pam_openape::fuzzing::sudo_argv for the input
//! format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pam_openape::fuzzing::sudo_argv(data));

//! Link the unwinder statically (libgcc_eh.a) instead of loading
//! libgcc_s.so.1 at every run.
//!
//! escapes keeps `panic = "unwind"` (the profile is shared with the PAM
//! module, whose hooks catch panics), so it needs `_Unwind_*`. Taken from
//! the shared libgcc_s, that costs each elevation a library map, its
//! relocations and its start-up CPU probe: about 0.2 ms per run on the
//! bench VM (README, Benchmarks). With libgcc_eh.a on the link line first,
//! the linker's `--as-needed` drops libgcc_s. The same archive is what
//! `gcc -static-libgcc` and Rust's own static glibc builds use. Where the C
//! compiler does not know the archive, the build falls back to libgcc_s
//! with a warning; nothing else changes.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let found = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    // Without the archive, gcc prints the bare name back.
    match found.as_deref().map(Path::new) {
        Some(p) if p.is_absolute() && p.is_file() => {
            let dir = p.parent().unwrap_or(Path::new("/"));
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=gcc_eh");
        }
        _ => println!(
            "cargo:warning=libgcc_eh.a not found through `{cc} -print-file-name`: escapes links libgcc_s.so.1 (slower start, same behaviour)"
        ),
    }
}

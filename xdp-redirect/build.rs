//! Compiles `bpf/steer.bpf.c` with clang into an object embedded in the crate.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let src = "bpf/steer.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");

    // libbpf-sys installs bpf_helpers.h & co under its OUT_DIR and exports the path as DEP_BPF_INCLUDE.
    let libbpf_include = env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports DEP_BPF_INCLUDE");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let obj = out.join("steer.bpf.o");
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        // Debian keeps asm/types.h under the multiarch directory.
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-I{libbpf_include}"))
        .args(["-c", src, "-o"])
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running {clang} to build the XDP program failed: {e}; install clang (make deps)"
            )
        });
    assert!(status.success(), "clang failed to compile {src}");
}

//! Compiles the XDP programs under `bpf/` (steer, decap, trafficgen, xdpfwd) with clang into objects embedded in the crate.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-env-changed=CLANG");
    // libbpf-sys installs bpf_helpers.h & co under its OUT_DIR and exports the path as DEP_BPF_INCLUDE.
    let libbpf_include = env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports DEP_BPF_INCLUDE");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    for name in ["steer", "decap", "trafficgen", "xdpfwd"] {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            // Debian keeps asm/types.h under the multiarch directory.
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg(format!("-I{libbpf_include}"))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {clang} to build the XDP programs failed: {e}; install clang (make deps)"
                )
            });
        assert!(status.success(), "clang failed to compile {src}");
    }
}

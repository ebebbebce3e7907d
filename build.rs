//! Records the git commit for `bodega --version` and, with the `cuda` feature, compiles
//! `kernels/cuda/*.cu` to PTX with nvcc, one file per kernel family and target architecture.
//!
//! Architectures: `BODEGA_CUDA_ARCHS` (comma-separated compute capabilities, default `80,90`). Each
//! family gets one PTX per architecture; at run time `src/ops/cuda.rs` loads the newest one the GPU
//! supports (the driver compiles PTX for newer GPUs too).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BODEGA_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_cuda_kernels();
    }
}

/// Default compute capabilities: Ampere (A100) and Hopper (H100/H200).
const DEFAULT_ARCHS: &str = "80,90";

fn compile_cuda_kernels() {
    println!("cargo:rerun-if-changed=kernels/cuda");
    println!("cargo:rerun-if-env-changed=BODEGA_CUDA_ARCHS");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let archs = std::env::var("BODEGA_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.into());
    let archs: Vec<u32> = archs
        .split(',')
        .map(|a| a.trim().parse().unwrap_or_else(|_| panic!("BODEGA_CUDA_ARCHS: '{a}' is not a compute capability")))
        .collect();
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let mut families: Vec<PathBuf> = std::fs::read_dir("kernels/cuda")
        .expect("kernels/cuda exists")
        .map(|e| e.expect("readable kernels/cuda").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    families.sort();
    let mut table = String::from("/// (family, compute capability, PTX), written by build.rs.\n");
    table.push_str("pub const PTX: &[(&str, u32, &str)] = &[\n");
    for source in &families {
        let family = source.file_stem().and_then(|s| s.to_str()).expect("UTF-8 kernel file name");
        for &arch in &archs {
            let ptx = out.join(format!("{family}.sm_{arch}.ptx"));
            run_nvcc(&nvcc, source, &ptx, arch);
            table.push_str(&format!("    ({family:?}, {arch}, include_str!({:?})),\n", ptx.display().to_string()));
        }
    }
    table.push_str("];\n");
    table.push_str(&format!("/// Compute capabilities compiled in.\npub const ARCHS: &[u32] = &{archs:?};\n"));
    std::fs::write(out.join("cuda_kernels.rs"), table).expect("OUT_DIR is writable");
}

fn run_nvcc(nvcc: &str, source: &Path, ptx: &Path, arch: u32) {
    let status = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{arch}"))
        .arg(source)
        .arg("-o")
        .arg(ptx)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {nvcc} ({e}): the cuda feature needs the CUDA toolchain (see docs/gpu.md / scripts/check-cuda.sh)")
        });
    assert!(status.success(), "{nvcc} failed on {}", source.display());
}

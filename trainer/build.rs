//! With the `cuda` feature, compiles `src/kernels.cu` to PTX for `cuda.rs` to embed. nvcc comes
//! from `NVCC`, `$CUDA_HOME/bin`, or `PATH` (`scripts/cuda-build-env.sh` sets it up); the
//! PTX targets `compute_$CUDA_COMPUTE_CAP` (default 80), which the driver compiles for newer GPUs.
use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=src/kernels.cu");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = env::var("NVCC").unwrap_or_else(|_| match env::var("CUDA_HOME") {
        Ok(home) => format!("{home}/bin/nvcc"),
        Err(_) => "nvcc".into(),
    });
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "src/kernels.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} ({e}): the cuda feature needs nvcc; set NVCC or CUDA_HOME, or source scripts/cuda-build-env.sh"));
    assert!(status.success(), "{nvcc} failed to compile src/kernels.cu");
}

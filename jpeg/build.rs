//! Tells the crate whether libjpeg-turbo was built with its SIMD code.
//!
//! mozjpeg-sys assembles the x86 SIMD kernels only when `nasm` is on PATH and otherwise builds
//! plain C (about 2× slower here) with nothing but a cargo warning. Its generated `jconfig.h`,
//! in the include folders it exports, says which happened; `wit_jpeg::SIMD` carries that to
//! the binary so long runs can warn about it.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(jpeg_simd)");
    let includes = env::var_os("DEP_JPEG_INCLUDE").unwrap_or_default();
    let simd = env::split_paths(&includes).any(|dir| {
        fs::read_to_string(Path::new(&dir).join("jconfig.h"))
            .is_ok_and(|config| config.contains("#define WITH_SIMD 1"))
    });
    if simd {
        println!("cargo::rustc-cfg=jpeg_simd");
    }
}

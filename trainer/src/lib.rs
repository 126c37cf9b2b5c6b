//! CLIP training in candle: the model (ViT or ResNet image tower + causal text transformer, HF
//! CLIP weight names), open_clip's contrastive training recipe, checkpoints that resume exactly, and the
//! retrieval / zero-shot metrics `wit eval` reports. Library code never prints: callers get a
//! `StepStats` per step through a callback.

pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda;
pub mod eval;
mod fused;
pub mod model;
pub mod open_clip;
pub mod optim;
mod resnet;
pub mod train;

/// candle, re-exported so callers build tensors and devices with the exact version the model uses.
pub use candle_core as candle;
pub use checkpoint::{export, load_model};
pub use config::{ClipConfig, PosEmbedInit, TextConfig, VisionConfig, VisionLayers};
pub use eval::{
    retrieval, text_to_image_misses, validation_loss, zero_shot_accuracy, Miss, Recall, Retrieval,
};
pub use fused::use_cuda_kernels;
pub use model::{clip_loss, ClipModel};
pub use optim::{AdamW, AdamWConfig};
pub use train::{embed, train, Gradients, MicroBatch, StepStats, TrainConfig, Trainer};

/// Everything that can go wrong while building, training, saving or evaluating a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed (shape mismatch, device, out of memory).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The model or training configuration is unusable.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The data source failed or was empty.
    #[error("data: {0}")]
    Data(String),
    /// The loss became NaN or infinite.
    #[error("training diverged at step {step} (loss {loss}); lower --lr or raise --warmup")]
    Diverged {
        /// The step whose loss was not finite.
        step: u64,
        /// That loss.
        loss: f64,
    },
}

/// Parses a device name: `cpu`, `cuda` (GPU 0) or `cuda:N`. CUDA needs a build with the `cuda` feature.
pub fn parse_device(name: &str) -> Result<candle_core::Device, TrainError> {
    let gpu = match name {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                TrainError::Config(format!("unknown device {name:?}; use cpu, cuda or cuda:N"))
            })?,
    };
    let device = candle_core::Device::new_cuda(gpu).map_err(|e| {
        TrainError::Config(format!(
            "cannot open {name} ({e}): build wit with `--features cuda` on a machine with a CUDA GPU, or use --device cpu"
        ))
    })?;
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(gpu) = &device {
        // SAFETY: candle runs every kernel and copy of a device on its one stream, so the
        // per-tensor events cudarc records to order work across streams order nothing here.
        // (Measured: no change on the plain-op path; kept because the kernel timings in
        // bench/RESULTS-gpu.md were taken with it.)
        unsafe { gpu.disable_event_tracking() };
    }
    Ok(device)
}

/// Keeps freed tensor memory in glibc's heap instead of returning it to the kernel.
///
/// Training allocates the same large buffers every step; with glibc's defaults each one above
/// 128 KiB is mmapped and unmapped, and the page faults cost about a third of the CPU time of a
/// `tiny` step. Raising the mmap threshold (to glibc's 32 MiB cap) and the trim threshold removes
/// that. It is process-wide, so binaries call it once at startup; elsewhere it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; any value is memory-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

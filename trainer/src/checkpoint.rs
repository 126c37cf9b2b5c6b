//! Checkpoint files. A checkpoint folder is also the Hugging Face export: `model.safetensors`
//! (CLIPModel names, f32) + `config.json`; training adds `optimizer.safetensors` and `trainer_state.json`.

use crate::config::ClipConfig;
use crate::model::ClipModel;
use crate::train::{TrainConfig, Trainer};
use crate::TrainError;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Model weights under Hugging Face CLIP names.
pub const MODEL_FILE: &str = "model.safetensors";
/// Hugging Face `config.json` with the open_clip form under `"open_clip"`.
pub const CONFIG_FILE: &str = "config.json";
/// AdamW moments plus a `step` scalar that must match the state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Step, training config and the caller's extra state (the loader's position); written last.
pub const STATE_FILE: &str = "trainer_state.json";

/// The JSON side of a checkpoint.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    adam_steps: u64,
    train_config: TrainConfig,
    extra: serde_json::Value,
}

fn io_err(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Checkpoint(format!(
        "{}: {e}; check the folder exists and is writable",
        path.display()
    ))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn fsync_and_rename(tmp: &Path, path: &Path) -> Result<(), TrainError> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| io_err(path, e))
}

/// Writes safetensors through a temporary name, fsync and rename, so readers never see half a file.
pub fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), TrainError> {
    let tmp = tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    fsync_and_rename(&tmp, path)
}

/// Writes bytes through a temporary name, fsync and rename, like [`save_atomic`].
pub(crate) fn write_atomic(bytes: &[u8], path: &Path) -> Result<(), TrainError> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    drop(f);
    fsync_and_rename(&tmp, path)
}

/// Writes the export part (`model.safetensors` + `config.json`) of a model.
pub fn export(model: &ClipModel, dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    model.save_weights(&dir.join(MODEL_FILE))?;
    let json = serde_json::to_vec_pretty(&model.config().hf_config_json())
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    write_atomic(&json, &dir.join(CONFIG_FILE))
}

pub(crate) fn save(
    trainer: &Trainer,
    dir: &Path,
    extra: serde_json::Value,
) -> Result<(), TrainError> {
    export(trainer.model(), dir)?;
    let mut tensors: HashMap<String, Tensor> =
        trainer.optimizer().state_tensors().into_iter().collect();
    tensors.insert(
        "step".into(),
        Tensor::new(trainer.step_count() as i64, &Device::Cpu)?,
    );
    save_atomic(&tensors, &dir.join(OPTIMIZER_FILE))?;
    let state = TrainerState {
        step: trainer.step_count(),
        adam_steps: trainer.optimizer().steps(),
        train_config: trainer.config().clone(),
        extra,
    };
    let json =
        serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    write_atomic(&json, &dir.join(STATE_FILE))
}

fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
    candle_core::safetensors::load(path, device).map_err(|e| {
        TrainError::Checkpoint(format!(
            "cannot read {}: {e}; is this a `wit train --out` folder?",
            path.display()
        ))
    })
}

/// Whether `dir` is open_clip's `local-dir:` layout rather than a wit or transformers folder:
/// its files there, no `config.json`. Config and weights are read by the same rule.
fn is_open_clip_folder(dir: &Path) -> bool {
    !dir.join(CONFIG_FILE).exists() && dir.join(crate::open_clip::OPEN_CLIP_CONFIG_FILE).exists()
}

fn read_json(path: &Path) -> Result<serde_json::Value, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{} is not JSON: {e}", path.display())))
}

/// Reads the configuration of a model folder: a `wit train --out` folder or a transformers CLIP
/// (`config.json`), or open_clip's `local-dir:` layout (`open_clip_config.json`).
pub fn read_config(dir: &Path) -> Result<ClipConfig, TrainError> {
    if is_open_clip_folder(dir) {
        let value = read_json(&dir.join(crate::open_clip::OPEN_CLIP_CONFIG_FILE))?;
        return crate::open_clip::read_model_cfg(&value["model_cfg"]);
    }
    ClipConfig::from_hf_config_json(&read_json(&dir.join(CONFIG_FILE))?)
}

/// Copies the weights of a model folder (`wit train --out`, a Hugging Face CLIP's
/// `model.safetensors`, or open_clip's `open_clip_model.safetensors`) into `model`, whose config
/// must be the folder's.
pub fn load_weights(model: &ClipModel, dir: &Path) -> Result<(), TrainError> {
    if is_open_clip_folder(dir) {
        let path = dir.join(crate::open_clip::OPEN_CLIP_MODEL_FILE);
        let file = read_tensors(&path, model.device())?;
        return model.load_tensors(&crate::open_clip::wit_tensors(&file, model)?);
    }
    model.load_tensors(&read_tensors(&dir.join(MODEL_FILE), model.device())?)
}

/// Loads an exported or checkpointed model for inference on `device` (f32 weights, bf16 compute on CUDA).
pub fn load_model(dir: &Path, device: &Device) -> Result<ClipModel, TrainError> {
    let cfg = read_config(dir)?;
    let mut model = ClipModel::new(&cfg, 0, candle_core::DType::F32, device)?;
    load_weights(&model, dir)?;
    if device.is_cuda() {
        model.set_compute_dtype(candle_core::DType::BF16)?;
    }
    Ok(model)
}

pub(crate) fn resume(
    dir: &Path,
    device: &Device,
) -> Result<(Trainer, serde_json::Value), TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{} is malformed: {e}", path.display())))?;
    let opt = read_tensors(&dir.join(OPTIMIZER_FILE), device)?;
    let saved_step = opt
        .get("step")
        .map(|t| t.to_scalar::<i64>())
        .transpose()?
        .unwrap_or(-1);
    if saved_step != state.step as i64 {
        return Err(TrainError::Checkpoint(format!(
            "{} is torn (optimizer at step {saved_step}, state at step {}): a save was interrupted; resume from an older copy or start over",
            dir.display(),
            state.step
        )));
    }
    let cfg = read_config(dir)?;
    let mut trainer = Trainer::new(&cfg, state.train_config, device)?;
    let weights = read_tensors(&dir.join(MODEL_FILE), device)?;
    let (model, adam, step) = trainer.parts_mut();
    model.load_tensors(&weights)?;
    adam.load_state(&opt, state.adam_steps)?;
    *step = state.step;
    Ok((trainer, state.extra))
}

//! Checkpoint files. A checkpoint folder is also the Hugging Face export: `model.safetensors`
//! (CLIPModel names, f32) + `config.json`; training adds a resume file
//! (`resume-<step>.safetensors`) and `trainer_state.json`, which names it.

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
/// Step, training config, the caller's extra state (the loader's position) and the name of the
/// resume file; written last, it is what makes a save count.
pub const STATE_FILE: &str = "trainer_state.json";
/// Start and end of a resume file's name: `resume-00001000.safetensors` holds everything a
/// resume reads besides the state file — weights, buffers and AdamW moments of one step.
const RESUME_PREFIX: &str = "resume-";
const RESUME_SUFFIX: &str = ".safetensors";
/// Prefix of the model's tensors inside a resume file (the moments are `adam.m.*`/`adam.v.*`).
const MODEL_PREFIX: &str = "model.";

/// The JSON side of a checkpoint.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    adam_steps: u64,
    train_config: TrainConfig,
    /// The resume file of this step, in the same folder.
    resume_file: String,
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

/// Writes the export, then the step's resume file, then the state file naming it, each through
/// a temporary name; then deletes older resume files. A process killed at any point leaves a state
/// file whose resume file is whole and of its step, so resume restarts from the last save that
/// finished — never from weights of one step with moments of another. (The export may then be a
/// step ahead; the resumed run rewrites it.)
pub(crate) fn save(
    trainer: &Trainer,
    dir: &Path,
    extra: serde_json::Value,
) -> Result<(), TrainError> {
    export(trainer.model(), dir)?;
    let step = trainer.step_count();
    let resume_file = format!("{RESUME_PREFIX}{step:08}{RESUME_SUFFIX}");
    let mut tensors: HashMap<String, Tensor> =
        trainer.optimizer().state_tensors().into_iter().collect();
    for (name, t) in trainer.model().master_tensors() {
        tensors.insert(format!("{MODEL_PREFIX}{name}"), t.clone());
    }
    tensors.insert("step".into(), Tensor::new(step as i64, &Device::Cpu)?);
    save_atomic(&tensors, &dir.join(&resume_file))?;
    let state = TrainerState {
        step,
        adam_steps: trainer.optimizer().steps(),
        train_config: trainer.config().clone(),
        resume_file: resume_file.clone(),
        extra,
    };
    let json =
        serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    write_atomic(&json, &dir.join(STATE_FILE))?;
    remove_resume_files_except(dir, &resume_file)
}

/// Deletes the resume files (and their temporaries) of other steps: saves that finished earlier,
/// or one a killed process wrote but never named.
fn remove_resume_files_except(dir: &Path, keep: &str) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stem = name.strip_suffix(".tmp").unwrap_or(name);
        if stem.starts_with(RESUME_PREFIX) && stem.ends_with(RESUME_SUFFIX) && name != keep {
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    Ok(())
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
    let mut saved = read_tensors(&dir.join(&state.resume_file), device)?;
    let saved_step = saved
        .remove("step")
        .map(|t| t.to_scalar::<i64>())
        .transpose()?
        .unwrap_or(-1);
    if saved_step != state.step as i64 {
        return Err(TrainError::Checkpoint(format!(
            "{} holds step {saved_step} but {STATE_FILE} says {}: the files come from different runs; resume from a folder one run wrote, or start over",
            state.resume_file, state.step
        )));
    }
    let weights: HashMap<String, Tensor> = saved
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(MODEL_PREFIX)?.to_string(), t.clone())))
        .collect();
    let cfg = read_config(dir)?;
    let mut trainer = Trainer::new(&cfg, state.train_config, device)?;
    let (model, adam, step) = trainer.parts_mut();
    model.load_tensors(&weights)?;
    adam.load_state(&saved, state.adam_steps)?;
    *step = state.step;
    Ok((trainer, state.extra))
}

//! The training step: open_clip's contrastive recipe with gradient accumulation, clipping, AdamW and
//! the warmup + cosine schedule; and a loop that feeds it micro-batches and reports every step.

use crate::checkpoint;
use crate::config::ClipConfig;
use crate::model::{clip_loss, l2_normalize, ClipModel, Frozen, LOGIT_SCALE, LOGIT_SCALE_MAX};
use crate::optim::{clip_coefficient, cosine_lr, grad_norm, AdamW, AdamWConfig};
use crate::resnet::Mode;
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// How to train: schedule, optimiser, accumulation. Serialised into checkpoints so a resume keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps in the whole run (the cosine reaches zero here).
    pub steps: u64,
    /// Peak learning rate (open_clip: 5e-4).
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Micro-batches per optimiser step; the contrastive batch spans all of them.
    pub accum: usize,
    /// Clip the global gradient norm to this; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// AdamW hyper-parameters.
    pub adamw: AdamWConfig,
    /// Seed of the weight initialisation.
    pub seed: u64,
    /// Freeze the image tower (open_clip's `--lock-image`; LiT when starting from pretrained
    /// weights): its features enter the loss without a graph, so it gets no gradient, no update
    /// and no backward pass. A ResNet's BatchNorm still tracks statistics, as in open_clip,
    /// unless `lock_image_freeze_bn_stats`.
    #[serde(default)]
    pub lock_image: bool,
    /// Freeze the text tower (open_clip's `--lock-text`), likewise.
    #[serde(default)]
    pub lock_text: bool,
    /// With `lock_image`: how many of the ViT's last layer groups still train (open_clip's
    /// `--lock-image-unlocked-groups`: 1 = the projection, 2 = also the last block and
    /// `ln_post`, each more one block further down). 0 locks the whole tower.
    #[serde(default)]
    pub lock_image_unlocked_groups: usize,
    /// With `lock_text`: how many of the text tower's last layer groups still train (open_clip's
    /// `--lock-text-unlocked-layers`), counted as for the image tower.
    #[serde(default)]
    pub lock_text_unlocked_layers: usize,
    /// With `lock_image` on a ResNet: BatchNorm uses and keeps its running statistics
    /// (open_clip's `--lock-image-freeze-bn-stats`), so the frozen tower computes what it
    /// computes at inference.
    #[serde(default)]
    pub lock_image_freeze_bn_stats: bool,
}

impl TrainConfig {
    /// The image tower's leading groups that get no gradient.
    fn frozen_image(&self, m: &ClipModel) -> Frozen {
        frozen(
            self.lock_image,
            self.lock_image_unlocked_groups,
            m.image_groups(),
        )
    }

    /// The text tower's leading groups that get no gradient.
    fn frozen_text(&self, m: &ClipModel) -> Frozen {
        frozen(
            self.lock_text,
            self.lock_text_unlocked_layers,
            m.text_groups(),
        )
    }

    /// Refuses lock settings open_clip refuses or ignores, instead of training something else.
    fn check_locks(&self, m: &ClipModel) -> Result<(), TrainError> {
        let problem = if self.lock_image_unlocked_groups > 0 && !self.lock_image {
            "unlocked image groups need lock_image (--lock-image)"
        } else if self.lock_text_unlocked_layers > 0 && !self.lock_text {
            "unlocked text layers need lock_text (--lock-text)"
        } else if self.lock_image_unlocked_groups > 0 && m.is_resnet() {
            "a ResNet image tower locks whole (open_clip has no partial lock for it either)"
        } else if self.lock_image_freeze_bn_stats && !(self.lock_image && m.is_resnet()) {
            "freezing BatchNorm statistics needs lock_image and a ResNet image tower"
        } else {
            return Ok(());
        };
        Err(TrainError::Config(problem.into()))
    }
}

/// The leading groups of a tower of `groups` that stay out of the graph: all but the last
/// `unlocked` when the tower is locked, none otherwise.
fn frozen(locked: bool, unlocked: usize, groups: usize) -> Frozen {
    Frozen(match locked {
        true => groups.saturating_sub(unlocked),
        false => 0,
    })
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            lr: 5e-4,
            warmup: 100,
            accum: 1,
            max_grad_norm: Some(1.0),
            adamw: AdamWConfig::default(),
            seed: 0,
            lock_image: false,
            lock_text: false,
            lock_image_unlocked_groups: 0,
            lock_text_unlocked_layers: 0,
            lock_image_freeze_bn_stats: false,
        }
    }
}

/// One micro-batch of matched pairs: row i of `images` goes with row i of `tokens`.
#[derive(Clone, Debug)]
pub struct MicroBatch {
    /// `(B, 3, H, W)` float images, already normalised.
    pub images: Tensor,
    /// `(B, L)` token ids; `L` may exceed the model's context (it is cut).
    pub tokens: Tensor,
    /// `(N, L)` token ids of hard-negative captions (NegCLIP): wrong answers every image of the
    /// accumulated batch must rank below its own caption. `None`: plain CLIP.
    pub negatives: Option<Tensor>,
}

/// Features of one micro-batch: images, captions and hard negatives (if any).
struct Features {
    image: Tensor,
    text: Tensor,
    negatives: Option<Tensor>,
}

impl Features {
    /// Encodes `b` in training mode; captions and negatives go through the text tower in one
    /// pass. `update_stats`: fold the batch's statistics into BatchNorm's running ones. A locked
    /// tower's frozen groups run without a graph; a wholly frozen tower's features are taken
    /// from `cached` (this micro-batch's first-pass features) when given: recomputing them would
    /// give the same numbers.
    fn of(
        m: &ClipModel,
        b: &MicroBatch,
        update_stats: bool,
        cfg: &TrainConfig,
        cached: Option<&Features>,
    ) -> Result<Features, TrainError> {
        let (frozen_image, frozen_text) = (cfg.frozen_image(m), cfg.frozen_text(m));
        let image = match cached {
            Some(c) if frozen_image.0 == m.image_groups() => c.image.clone(),
            _ => {
                let mode = match cfg.lock_image_freeze_bn_stats {
                    true => Mode::Eval,
                    false => Mode::Train { update_stats },
                };
                m.encode_image_in(&b.images, mode, frozen_image)?
            }
        };
        let (text, negatives) = match cached {
            Some(c) if frozen_text.0 == m.text_groups() => (c.text.clone(), c.negatives.clone()),
            _ => Self::texts(m, b, frozen_text)?,
        };
        Ok(Features {
            image,
            text,
            negatives,
        })
    }

    /// Caption and hard-negative features of `b`, the `frozen` groups without a graph.
    fn texts(
        m: &ClipModel,
        b: &MicroBatch,
        frozen: Frozen,
    ) -> Result<(Tensor, Option<Tensor>), TrainError> {
        let Some(neg) = &b.negatives else {
            return Ok((m.encode_text_in(&b.tokens, frozen)?, None));
        };
        let n = b.tokens.dim(0)?;
        let all = m.encode_text_in(&Tensor::cat(&[&b.tokens, neg], 0)?, frozen)?;
        let extra = all.dim(0)? - n;
        Ok((all.narrow(0, 0, n)?, Some(all.narrow(0, n, extra)?)))
    }

    fn detach(&self) -> Features {
        Features {
            image: self.image.detach(),
            text: self.text.detach(),
            negatives: self.negatives.as_ref().map(Tensor::detach),
        }
    }
}

/// The loss of micro-batch features placed side by side as one contrastive batch.
fn joint_loss(parts: &[&Features], scale: &Tensor) -> Result<Tensor, TrainError> {
    let images: Vec<&Tensor> = parts.iter().map(|f| &f.image).collect();
    let texts: Vec<&Tensor> = parts.iter().map(|f| &f.text).collect();
    let negatives: Vec<&Tensor> = parts.iter().filter_map(|f| f.negatives.as_ref()).collect();
    let negatives = match negatives.len() {
        0 => None,
        _ => Some(Tensor::cat(&negatives, 0)?),
    };
    Ok(clip_loss(
        &Tensor::cat(&images, 0)?,
        &Tensor::cat(&texts, 0)?,
        negatives.as_ref(),
        scale,
    )?)
}

/// What one optimiser step did, for logs and progress bars.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepStats {
    /// 1-based number of the step just taken.
    pub step: u64,
    /// Contrastive loss over the whole accumulated batch, before the update.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// `logit_scale` after the update (the log of the inverse temperature).
    pub logit_scale: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Pairs in the contrastive batch.
    pub samples: usize,
    /// Pairs per second of this step.
    pub samples_per_s: f64,
}

/// Loss and gradients by parameter name.
pub struct Gradients {
    /// The contrastive loss.
    pub loss: f64,
    /// Gradient of every parameter that received one.
    pub grads: BTreeMap<String, Tensor>,
}

/// The model, its optimiser and the step counter: everything a checkpoint must hold.
pub struct Trainer {
    model: ClipModel,
    opt: AdamW,
    cfg: TrainConfig,
    step: u64,
}

impl Trainer {
    /// A fresh model on `device`: f32 master weights; bf16 compute on CUDA.
    pub fn new(
        clip: &ClipConfig,
        cfg: TrainConfig,
        device: &Device,
    ) -> Result<Trainer, TrainError> {
        Trainer::with_dtype(clip, cfg, device, DType::F32)
    }

    /// Like `new` with master weights of `param_dtype` (f64 for reference checks).
    pub fn with_dtype(
        clip: &ClipConfig,
        cfg: TrainConfig,
        device: &Device,
        param_dtype: DType,
    ) -> Result<Trainer, TrainError> {
        if cfg.accum == 0 {
            return Err(TrainError::Config("accum must be at least 1".into()));
        }
        cfg.adamw.check()?;
        let mut model = ClipModel::new(clip, cfg.seed, param_dtype, device)?;
        cfg.check_locks(&model)?;
        if device.is_cuda() {
            model.set_compute_dtype(DType::BF16)?;
        }
        let mut opt = AdamW::new(model.vars(), cfg.adamw.clone())?;
        opt.mirror_into(model.shadows());
        Ok(Trainer {
            model,
            opt,
            cfg,
            step: 0,
        })
    }

    /// Chooses the forward pass's dtype (bf16 is the default on CUDA); master weights, gradients
    /// and optimiser state stay in the master dtype.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<(), TrainError> {
        self.model.set_compute_dtype(dtype)?;
        self.opt.mirror_into(self.model.shadows());
        Ok(())
    }

    /// The model being trained.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The optimiser (exposed so tests can check which tensors it decays).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// Optimiser steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Loss and gradients of the whole accumulated batch, computed open_clip's way: features of
    /// every micro-batch are first computed without a graph, then each micro-batch is recomputed
    /// with its graph and placed among the cached others, so the gradients sum to those of one big
    /// batch while only one micro-batch's activations are alive at a time.
    ///
    /// A ResNet's BatchNorm normalises each micro-batch by its own statistics (as open_clip's
    /// does), so with one there the sum is not exactly one big batch's; its running statistics
    /// take each micro-batch once, in the first pass.
    pub fn gradients(&self, micro: &[MicroBatch]) -> Result<Gradients, TrainError> {
        let m = &self.model;
        if micro.len() == 1 {
            let loss = joint_loss(
                &[&Features::of(m, &micro[0], true, &self.cfg, None)?],
                m.logit_scale(),
            )?;
            let grads = self.collect(&loss.backward()?)?;
            return Ok(Gradients {
                loss: scalar(&loss)?,
                grads,
            });
        }
        let cached = micro
            .iter()
            .map(|b| Ok(Features::of(m, b, true, &self.cfg, None)?.detach()))
            .collect::<Result<Vec<_>, TrainError>>()?;
        let mut total: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_value = 0.0;
        for (j, batch) in micro.iter().enumerate() {
            let live = Features::of(m, batch, false, &self.cfg, Some(&cached[j]))?;
            let parts: Vec<&Features> = cached
                .iter()
                .enumerate()
                .map(|(i, c)| if i == j { &live } else { c })
                .collect();
            // logit_scale feeds every micro-step's loss; let only the first count it so the sum is exact.
            let scale = if j == 0 {
                m.logit_scale().clone()
            } else {
                m.logit_scale().detach()
            };
            let loss = joint_loss(&parts, &scale)?;
            if j == 0 {
                loss_value = scalar(&loss)?;
            }
            for (name, g) in self.collect(&loss.backward()?)? {
                let sum = match total.remove(&name) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                total.insert(name, sum);
            }
        }
        Ok(Gradients {
            loss: loss_value,
            grads: total,
        })
    }

    /// Each parameter's gradient, in the master dtype, from the tensor the forward pass read.
    fn collect(
        &self,
        store: &candle_core::backprop::GradStore,
    ) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let m = &self.model;
        let mut grads = BTreeMap::new();
        for (name, var) in m.vars() {
            let read = m.read_tensor(name).unwrap_or(var.as_tensor());
            if let Some(g) = store.get(read) {
                grads.insert(name.clone(), g.to_dtype(var.dtype())?);
            }
        }
        Ok(grads)
    }

    /// One optimiser step on `micro` (`accum` micro-batches): gradients, clipping, AdamW at the
    /// scheduled rate, then `logit_scale` clamped to [0, ln 100].
    pub fn step(&mut self, micro: &[MicroBatch]) -> Result<StepStats, TrainError> {
        let start = Instant::now();
        let samples = micro
            .iter()
            .map(|b| b.images.dim(0))
            .sum::<candle_core::Result<usize>>()?;
        let Gradients { loss, grads } = self.gradients(micro)?;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss,
            });
        }
        let grad_norm = grad_norm(&grads)?;
        let grad_scale = match self.cfg.max_grad_norm {
            Some(max) => clip_coefficient(grad_norm, max),
            None => 1.0,
        };
        let lr = cosine_lr(self.step, self.cfg.lr, self.cfg.warmup, self.cfg.steps);
        self.opt.step_scaled(&grads, lr, grad_scale)?;
        let scale_var = &self.model.vars()[LOGIT_SCALE];
        scale_var.set(&scale_var.as_tensor().clamp(0.0, LOGIT_SCALE_MAX)?)?;
        self.step += 1;
        let logit_scale = scalar(self.model.logit_scale())?;
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            logit_scale,
            grad_norm,
            samples,
            samples_per_s: samples as f64 / start.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// Trains until `steps` steps are done or `batches` runs dry, grouping `accum` micro-batches per
    /// step; `on_step` sees every step and may stop the run early by returning `false`.
    pub fn run<I, F>(&mut self, batches: I, mut on_step: F) -> Result<(), TrainError>
    where
        I: IntoIterator<Item = Result<MicroBatch, TrainError>>,
        F: FnMut(&Trainer, &StepStats) -> Result<bool, TrainError>,
    {
        let mut batches = batches.into_iter();
        while self.step < self.cfg.steps {
            let micro = batches
                .by_ref()
                .take(self.cfg.accum)
                .collect::<Result<Vec<_>, _>>()?;
            if micro.len() < self.cfg.accum {
                break;
            }
            let stats = self.step(&micro)?;
            if !on_step(self, &stats)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes a checkpoint into `dir`: the Hugging Face export (`model.safetensors`, `config.json`),
    /// the step's resume file (weights, buffers and optimiser moments together) and
    /// `trainer_state.json` carrying the step, the training config, `extra` (e.g. the loader's
    /// state) and the resume file's name. The state file is written last, so a process killed
    /// mid-save leaves the previous checkpoint whole, and `resume` continues from it.
    pub fn save(&self, dir: &Path, extra: serde_json::Value) -> Result<(), TrainError> {
        checkpoint::save(self, dir, extra)
    }

    /// Reopens a checkpoint written by `save`; returns the trainer and the `extra` value saved with it.
    pub fn resume(dir: &Path, device: &Device) -> Result<(Trainer, serde_json::Value), TrainError> {
        checkpoint::resume(dir, device)
    }

    pub(crate) fn parts_mut(&mut self) -> (&mut ClipModel, &mut AdamW, &mut u64) {
        (&mut self.model, &mut self.opt, &mut self.step)
    }
}

fn scalar(t: &Tensor) -> Result<f64, TrainError> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Trains a fresh model of `clip` on `batches` with `cfg` (the library entry the demo calls).
pub fn train<I, F>(
    clip: &ClipConfig,
    cfg: TrainConfig,
    device: &Device,
    batches: I,
    on_step: F,
) -> Result<Trainer, TrainError>
where
    I: IntoIterator<Item = Result<MicroBatch, TrainError>>,
    F: FnMut(&Trainer, &StepStats) -> Result<bool, TrainError>,
{
    let mut trainer = Trainer::new(clip, cfg, device)?;
    trainer.run(batches, on_step)?;
    Ok(trainer)
}

/// Embeds images and texts batch by batch without gradients (for evaluation).
pub fn embed(
    model: &ClipModel,
    batches: impl IntoIterator<Item = Result<MicroBatch, TrainError>>,
) -> Result<(Tensor, Tensor), TrainError> {
    let mut imgs = Vec::new();
    let mut txts = Vec::new();
    for b in batches {
        let b = b?;
        imgs.push(l2_normalize(&model.image_features(&b.images)?.detach())?);
        txts.push(l2_normalize(&model.text_features(&b.tokens)?.detach())?);
    }
    if imgs.is_empty() {
        return Err(TrainError::Data(
            "no evaluation pairs: the data yielded no batch".into(),
        ));
    }
    Ok((Tensor::cat(&imgs, 0)?, Tensor::cat(&txts, 0)?))
}

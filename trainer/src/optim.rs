//! AdamW with open_clip's parameter groups, the warmup + cosine schedule, and global-norm clipping.
//!
//! Written here rather than using `candle_nn::AdamW` because open_clip exempts 1-D tensors from weight
//! decay (candle's has one group) and because checkpoints must carry the moments to resume identically.

use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

type CResult<T> = candle_core::Result<T>;

/// AdamW hyper-parameters; the defaults are open_clip's for ViT models.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay applied to tensors with two or more dimensions.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
        }
    }
}

impl AdamWConfig {
    /// Refuses settings that make the update NaN or diverge: a β outside `[0, 1)` (β = 1 divides
    /// by zero in the bias correction), `eps` not above 0, a negative weight decay.
    pub fn check(&self) -> Result<(), crate::TrainError> {
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        let problem = if !beta_ok(self.beta1) || !beta_ok(self.beta2) {
            "AdamW's beta1 and beta2 must be in [0, 1)"
        } else if !(self.eps > 0.0 && self.eps.is_finite()) {
            "AdamW's eps must be a positive number"
        } else if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            "the weight decay must be 0 or more"
        } else {
            return Ok(());
        };
        Err(crate::TrainError::Config(format!(
            "{problem} (got {self:?})"
        )))
    }
}

/// One parameter's optimiser slot.
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
    /// The parameter's compute-dtype copy, rewritten after each update.
    mirror: Option<Var>,
}

/// AdamW over named `Var`s (PyTorch's update rule), decaying only tensors of rank ≥ 2 — open_clip's
/// rule that keeps gains, biases, `logit_scale` and the class embedding out of weight decay.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: BTreeMap<String, Slot>,
    t: u64,
}

impl AdamW {
    /// Zero moments for every variable.
    pub fn new(vars: &BTreeMap<String, Var>, cfg: AdamWConfig) -> CResult<AdamW> {
        let slots = vars
            .iter()
            .map(|(name, var)| {
                let slot = Slot {
                    var: var.clone(),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    decay: var.rank() >= 2,
                    mirror: None,
                };
                Ok((name.clone(), slot))
            })
            .collect::<CResult<_>>()?;
        Ok(AdamW { cfg, slots, t: 0 })
    }

    /// Rewrites these copies (by parameter name, in another dtype) from each updated parameter:
    /// the model's compute-dtype weights (`ClipModel::shadows`). Replaces any earlier set.
    pub fn mirror_into(&mut self, copies: &BTreeMap<String, Var>) {
        for (name, slot) in self.slots.iter_mut() {
            slot.mirror = copies.get(name).cloned();
        }
    }

    /// Whether `name` is weight-decayed (rank ≥ 2); `None` for an unknown name.
    pub fn decays(&self, name: &str) -> Option<bool> {
        self.slots.get(name).map(|s| s.decay)
    }

    /// Steps taken so far (the bias-correction counter).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update at learning rate `lr` with gradients by parameter name; parameters without a
    /// gradient are left alone (their moments too).
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>, lr: f64) -> CResult<()> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// `step` with every gradient first multiplied by `grad_scale`: clipping by global norm folded
    /// into the update instead of a pass of its own. On CUDA each parameter is one kernel.
    pub fn step_scaled(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> CResult<()> {
        self.t += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, slot) in self.slots.iter_mut() {
            let Some(g) = grads.get(name) else { continue };
            let decay = match slot.decay {
                true => 1.0 - lr * c.weight_decay,
                false => 1.0,
            };
            #[cfg(feature = "cuda")]
            if crate::fused::cuda_kernels(slot.var.as_tensor()) {
                let update = crate::cuda::AdamWStep {
                    lr,
                    betas: (c.beta1, c.beta2),
                    eps: c.eps,
                    corrections: (bc1, bc2),
                    decay,
                    grad_scale,
                };
                let g = g.contiguous()?;
                let mirror = slot.mirror.as_ref().map(|m| m.as_tensor());
                let state = [slot.var.as_tensor(), &slot.m, &slot.v, &g];
                if crate::cuda::adamw(state, mirror, &update)? {
                    continue;
                }
            }
            let g = match grad_scale == 1.0 {
                true => g.clone(),
                false => (g * grad_scale)?,
            };
            slot.m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&slot.m / bc1)?;
            let v_hat = (&slot.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let p = slot.var.as_tensor();
            let p = match slot.decay {
                true => (p * decay)?,
                false => p.clone(),
            };
            slot.var.set(&(p - (update * lr)?)?)?;
            if let Some(mirror) = &slot.mirror {
                mirror.set(&slot.var.as_tensor().to_dtype(mirror.dtype())?)?;
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`adam.m.<param>`, `adam.v.<param>`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|(n, s)| {
                [
                    (format!("adam.m.{n}"), s.m.clone()),
                    (format!("adam.v.{n}"), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments and step counter written by `state_tensors`.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        t: u64,
    ) -> Result<(), crate::TrainError> {
        for (name, slot) in self.slots.iter_mut() {
            let get = |kind: &str| {
                tensors.get(&format!("adam.{kind}.{name}")).ok_or_else(|| {
                    crate::TrainError::Checkpoint(format!(
                        "optimiser state lacks adam.{kind}.{name}; the checkpoint is incomplete"
                    ))
                })
            };
            let dev = slot.var.device();
            slot.m = get("m")?.to_dtype(slot.var.dtype())?.to_device(dev)?;
            slot.v = get("v")?.to_dtype(slot.var.dtype())?.to_device(dev)?;
        }
        self.t = t;
        Ok(())
    }
}

/// open_clip's `cosine_lr`: linear warmup over `warmup` steps to `base`, then a cosine to zero at `total`.
pub fn cosine_lr(step: u64, base: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let e = (step - warmup) as f64;
    let es = total.saturating_sub(warmup).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * (e / es).min(1.0)).cos()) * base
}

/// What clipping to `max_norm` (PyTorch's `clip_grad_norm_`) multiplies gradients of global norm
/// `norm` by: at most 1, so gradients are only ever scaled down.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The global L2 norm of all gradients; on CUDA one reduction kernel per tensor into one sum.
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> CResult<f64> {
    #[cfg(feature = "cuda")]
    if grads
        .values()
        .next()
        .is_some_and(crate::fused::cuda_kernels)
    {
        if let Some(squares) = crate::cuda::sum_squares(grads.values())? {
            return Ok(squares.sqrt());
        }
    }
    let mut total: Option<Tensor> = None;
    for g in grads.values() {
        let s = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    Ok(match total {
        Some(t) => t.to_scalar::<f64>()?.sqrt(),
        None => 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn settings_that_break_the_update_are_refused() {
        assert!(AdamWConfig::default().check().is_ok());
        let with = |f: fn(&mut AdamWConfig)| {
            let mut c = AdamWConfig::default();
            f(&mut c);
            c.check()
        };
        assert!(with(|c| c.beta2 = 1.0).is_err());
        assert!(with(|c| c.beta1 = -0.1).is_err());
        assert!(with(|c| c.eps = 0.0).is_err());
        assert!(with(|c| c.weight_decay = f64::NAN).is_err());
        assert!(with(|c| c.beta1 = 0.0).is_ok());
    }

    #[test]
    fn schedule_warms_up_linearly_then_follows_the_cosine_to_zero() {
        assert!((cosine_lr(0, 1.0, 10, 110) - 0.1).abs() < 1e-12);
        assert!((cosine_lr(9, 1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(10, 1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(60, 1.0, 10, 110) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(110, 1.0, 10, 110).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let dev = Device::Cpu;
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), Tensor::new(&[3f64, 0.0], &dev).unwrap());
        g.insert("b".to_string(), Tensor::new(&[[4f64]], &dev).unwrap());
        let norm = grad_norm(&g).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((clip_coefficient(norm, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_coefficient(norm, 10.0), 1.0);
    }

    #[test]
    fn a_scaled_step_is_the_step_on_scaled_gradients() {
        let dev = Device::Cpu;
        let fresh = || {
            let mut vars = BTreeMap::new();
            vars.insert("w".to_string(), Var::new(&[[1.0f64, -2.0]], &dev).unwrap());
            vars
        };
        let g = Tensor::new(&[[0.5f64, -0.25]], &dev).unwrap();
        let (a, b) = (fresh(), fresh());
        let mut opt_a = AdamW::new(&a, AdamWConfig::default()).unwrap();
        let mut opt_b = AdamW::new(&b, AdamWConfig::default()).unwrap();
        for _ in 0..3 {
            let grads = BTreeMap::from([("w".to_string(), g.clone())]);
            opt_a.step_scaled(&grads, 0.1, 0.3).unwrap();
            let scaled = BTreeMap::from([("w".to_string(), (&g * 0.3).unwrap())]);
            opt_b.step(&scaled, 0.1).unwrap();
        }
        let (wa, wb) = (a["w"].as_tensor(), b["w"].as_tensor());
        let diff = (wa - wb).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-15);
        assert!(
            wa.to_vec2::<f64>().unwrap()[0][0] != 1.0,
            "the step must move w"
        );
    }

    #[test]
    fn adamw_matches_pytorch_update_and_skips_decay_on_vectors() {
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        vars.insert("w".to_string(), Var::new(&[[1.0f64, -2.0]], &dev).unwrap());
        vars.insert("b".to_string(), Var::new(&[1.0f64, -2.0], &dev).unwrap());
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(&vars, cfg.clone()).unwrap();
        let mut grads = BTreeMap::new();
        grads.insert(
            "w".to_string(),
            Tensor::new(&[[0.5f64, 0.25]], &dev).unwrap(),
        );
        grads.insert("b".to_string(), Tensor::new(&[0.5f64, 0.25], &dev).unwrap());
        let lr = 0.1;
        opt.step(&grads, lr).unwrap();
        opt.step(&grads, lr).unwrap();
        // By hand: a constant gradient g gives m̂ = g, v̂ = g², so each step moves by lr·g/(|g|+eps).
        for (p0, g) in [(1.0f64, 0.5f64), (-2.0, 0.25)] {
            let step = lr * g / (g.abs() + cfg.eps);
            let decayed = ((p0 * (1.0 - lr * cfg.weight_decay)) - step)
                * (1.0 - lr * cfg.weight_decay)
                - step;
            let plain = p0 - 2.0 * step;
            let w = vars["w"].as_tensor().to_vec2::<f64>().unwrap()[0].clone();
            let b = vars["b"].as_tensor().to_vec1::<f64>().unwrap();
            let i = if p0 > 0.0 { 0 } else { 1 };
            assert!(
                (w[i] - decayed).abs() < 1e-12,
                "w[{i}] {} vs {decayed}",
                w[i]
            );
            assert!((b[i] - plain).abs() < 1e-12, "b[{i}] {} vs {plain}", b[i]);
        }
    }

    /// On a GPU (feature `cuda`): the AdamW kernel, with clipping's scale and decay, against the
    /// plain-op update on the CPU, and the norm kernel against the CPU's norm.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_adamw_and_norm_kernels_match_the_cpu() {
        use candle_core::DType;
        use rand::{Rng, SeedableRng};
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no CUDA device: the AdamW kernel was not checked");
            return;
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (p0, grads) = (random(5000), [random(5000), random(5000), random(5000)]);
        // Wider than one launch's grid (1,056 blocks of 256 threads): every block sums a strided
        // share and adds it, and the odd length leaves a ragged last warp.
        let (wide, narrow) = (random(700_001), random(37));
        let norms = [&Device::Cpu, &gpu].map(|device| {
            let grads = BTreeMap::from([
                (
                    "wide".to_string(),
                    Tensor::new(wide.as_slice(), device).unwrap(),
                ),
                (
                    "narrow".to_string(),
                    Tensor::new(narrow.as_slice(), device).unwrap(),
                ),
            ]);
            grad_norm(&grads).unwrap()
        });
        eprintln!("norm kernel vs CPU on 700,038 values: {norms:?}");
        assert!(
            (norms[0] - norms[1]).abs() < 1e-5 * norms[0],
            "norm {norms:?}"
        );
        let cpu = BTreeMap::from([(
            "w".to_string(),
            Var::from_vec(p0.clone(), (50, 100), &Device::Cpu).unwrap(),
        )]);
        let mut opt = AdamW::new(&cpu, AdamWConfig::default()).unwrap();
        let var = Var::from_vec(p0, (50, 100), &gpu).unwrap();
        let (m, v) = (var.zeros_like().unwrap(), var.zeros_like().unwrap());
        let mirror = Var::from_tensor(&var.as_tensor().to_dtype(DType::BF16).unwrap()).unwrap();
        let c = AdamWConfig::default();
        for (t, g) in grads.iter().enumerate() {
            let g_cpu = Tensor::from_vec(g.clone(), (50, 100), &Device::Cpu).unwrap();
            let g_gpu = g_cpu.to_device(&gpu).unwrap();
            let norms = [&g_cpu, &g_gpu]
                .map(|g| grad_norm(&BTreeMap::from([("w".to_string(), g.clone())])).unwrap());
            assert!(
                (norms[0] - norms[1]).abs() < 1e-5 * norms[0],
                "norm {norms:?}"
            );
            opt.step_scaled(&BTreeMap::from([("w".to_string(), g_cpu)]), 0.01, 0.5)
                .unwrap();
            let step = (t + 1) as i32;
            let update = crate::cuda::AdamWStep {
                lr: 0.01,
                betas: (c.beta1, c.beta2),
                eps: c.eps,
                corrections: (1.0 - c.beta1.powi(step), 1.0 - c.beta2.powi(step)),
                decay: 1.0 - 0.01 * c.weight_decay,
                grad_scale: 0.5,
            };
            let state = [var.as_tensor(), &m, &v, &g_gpu];
            assert!(crate::cuda::adamw(state, Some(mirror.as_tensor()), &update).unwrap());
        }
        let got = var.as_tensor().to_device(&Device::Cpu).unwrap();
        let diff = (got - cpu["w"].as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        eprintln!("AdamW kernel vs CPU: max difference {diff:.2e}");
        assert!(
            diff < 1e-6,
            "AdamW kernel differs from the CPU update by {diff}"
        );
        let copy = mirror
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let want = cpu["w"]
            .as_tensor()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let off = (copy - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(off < 1e-2, "the bf16 copy is {off} off the updated weights");
    }
}

//! Noise injection: random perturbations of inputs, embeddings, weights or labels.
//!
//! Training on `L(x + e)` with random `e` (eq. (2)-(4) of the seed article on generalisation) is the
//! cheapest member of the family, and the least specific: one draw per example estimates the noisy
//! objective `E[L(x + e)]` poorly, and eq. (4) averages `k` draws at `k` times the cost. To second
//! order the noisy objective is `L + sigma^2/2 tr(H)` ([`crate::laplacian`]).
//!
//! * [`Noise::Gaussian`]: additive `x + sigma * n`, `n ~ N(0, I)`.
//! * [`Noise::Bernoulli`]: multiplicative dropout-style `x * m / keep`, `m ~ Bernoulli(keep)` (mean x).
//! * [`Noise::Uniform`]: multiplicative `x * u`, `u ~ U[low, high)`.
//!
//! Multiplicative noise is returned as a perturbation that stays attached to the point, so a weight
//! trained through it gets the gradient of `L(w * m)`. Label smoothing is the expectation of label
//! noise ([`label_noise`], [`label_smoothing`]). Book chapter: "Noise".

use crate::error::{check_count, check_non_negative};
use crate::method::{Batch, Method};
use crate::step::Step;
use crate::target::Target;
use crate::{Error, Result, Rng};
use candle_core::{DType, Device, Tensor};

/// A noise distribution for a [`Target`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    /// Additive Gaussian with standard deviation `sigma`.
    Gaussian {
        /// Standard deviation (>= 0).
        sigma: f64,
    },
    /// Multiplicative Bernoulli (dropout) keeping each entry with probability `keep`, rescaled by 1/keep.
    Bernoulli {
        /// Keep probability in (0, 1].
        keep: f64,
    },
    /// Multiplicative uniform factor in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (> low).
        high: f64,
    },
}

impl Noise {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Noise::Gaussian { sigma } => check_non_negative("sigma", sigma),
            Noise::Bernoulli { keep } => {
                if keep.is_finite() && keep > 0.0 && keep <= 1.0 {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument {
                        name: "keep",
                        reason: format!("a keep probability lies in (0, 1], got {keep}"),
                        fix: "pass 0 < keep <= 1 (keep = 1 - dropout rate)".into(),
                    })
                }
            }
            Noise::Uniform { low, high } => {
                if low.is_finite() && high.is_finite() && high > low {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument {
                        name: "high",
                        reason: format!("need finite low < high, got [{low}, {high})"),
                        fix: "pass low < high".into(),
                    })
                }
            }
        }
    }

    /// A perturbation `delta` with `target.perturb(delta)` distributed as the noisy point.
    pub fn sample(&self, target: &Target, rng: &mut Rng) -> Result<Tensor> {
        self.validate()?;
        let p = target.point();
        let (shape, dtype, device) = (p.shape(), p.dtype(), p.device());
        let delta = match *self {
            Noise::Gaussian { sigma } => (rng.normal(shape, dtype, device)? * sigma)?,
            Noise::Bernoulli { keep } => {
                let factor = (rng.bernoulli(keep, shape, dtype, device)? / keep)?;
                (p * (factor - 1.0)?)?
            }
            Noise::Uniform { low, high } => {
                let factor = rng.uniform(low, high, shape, dtype, device)?;
                (p * (factor - 1.0)?)?
            }
        };
        target.apply_mask(&delta)
    }

    /// The noisy point.
    pub fn apply(&self, target: &Target, rng: &mut Rng) -> Result<Tensor> {
        target.perturb(&self.sample(target, rng)?)
    }
}

impl Method for Noise {
    /// One step on `L(x + e)` for one draw `e`: one forward and one backward pass. `clean_loss` is the
    /// noisy loss too (the clean one would cost another pass).
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        if batch.target().is_in_place() && !matches!(self, Noise::Gaussian { .. }) {
            // `x * m` must stay attached to the weight for its gradient (`m dL/d(x m)`); an in-place
            // pass sets the weight's values and would lose the factor m.
            batch.target().refuse_in_place()?;
        }
        let delta = self.sample(batch.target(), rng)?;
        let (loss, grads) = batch
            .target()
            .gradients_at(&|p: &Tensor| batch.loss_at(p), Some(&delta))?;
        Ok(Step {
            loss: loss.clone(),
            clean_loss: loss,
            grads,
            passes: crate::step::Passes {
                forward: 1,
                backward: 1,
                double_backward: 0,
            },
        })
    }
}

/// The `k`-sample average of eq. (4), `1/k sum_j L(x + e_j)`, trainable. With `antithetic`, draws come in
/// pairs `(e, -e)` (Gaussian noise only, `k` even), which cancels every odd term of the Taylor series.
pub fn noisy_loss<F>(
    target: &Target,
    loss_fn: &F,
    noise: Noise,
    k: usize,
    antithetic: bool,
    rng: &mut Rng,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    check_count("k", k)?;
    if antithetic {
        if !matches!(noise, Noise::Gaussian { .. }) {
            return Err(Error::InvalidArgument {
                name: "antithetic",
                reason: "antithetic pairs (e, -e) need symmetric additive noise".into(),
                fix: "use Noise::Gaussian, or antithetic = false".into(),
            });
        }
        if !k.is_multiple_of(2) {
            return Err(Error::InvalidArgument {
                name: "k",
                reason: format!("antithetic sampling draws pairs, so k must be even, got {k}"),
                fix: "pass an even k".into(),
            });
        }
    }
    let mut total: Option<Tensor> = None;
    let mut add = |loss: Tensor| -> Result<()> {
        total = Some(match total.take() {
            None => loss,
            Some(acc) => (acc + loss)?,
        });
        Ok(())
    };
    let draws = if antithetic { k / 2 } else { k };
    for _ in 0..draws {
        let delta = noise.sample(target, rng)?;
        add(target.loss_at(loss_fn, &delta)?)?;
        if antithetic {
            add(target.loss_at(loss_fn, &delta.neg()?)?)?;
        }
    }
    Ok((total.expect("k >= 1") / k as f64)?)
}

/// Checks a label-smoothing (or label-noise) probability: in [0, 1].
pub(crate) fn check_smoothing(smoothing: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::InvalidArgument {
            name: "smoothing",
            reason: format!("a smoothing probability lies in [0, 1], got {smoothing}"),
            fix: "pass 0 <= smoothing <= 1 (0.1 is the usual value)".into(),
        });
    }
    Ok(())
}

fn check_labels(labels: &Tensor, classes: usize, smoothing: f64) -> Result<Vec<u32>> {
    check_count("classes", classes)?;
    check_smoothing(smoothing)?;
    if labels.rank() != 1 {
        return Err(Error::ShapeMismatch {
            name: "labels",
            expected: "(batch,) class indices".into(),
            got: labels.dims().to_vec(),
        });
    }
    crate::error::check_indices("labels", labels)?;
    let values: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    if values.is_empty() {
        return Err(Error::EmptyBatch {
            name: "labels",
            detail: "is empty".into(),
        });
    }
    if let Some(bad) = values.iter().find(|v| **v as usize >= classes) {
        return Err(Error::InvalidArgument {
            name: "labels",
            reason: format!("label {bad} is out of range for {classes} classes"),
            fix: "labels must lie in 0..classes".into(),
        });
    }
    Ok(values)
}

fn rows(
    values: Vec<f64>,
    batch: usize,
    classes: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, (batch, classes), device)?.to_dtype(dtype)?)
}

/// Soft targets `(1 - smoothing) onehot(y) + smoothing / classes`: the expectation of [`label_noise`].
pub fn label_smoothing(
    labels: &Tensor,
    classes: usize,
    smoothing: f64,
    dtype: DType,
) -> Result<Tensor> {
    let values = check_labels(labels, classes, smoothing)?;
    let mut out = vec![smoothing / classes as f64; values.len() * classes];
    for (row, y) in values.iter().enumerate() {
        out[row * classes + *y as usize] += 1.0 - smoothing;
    }
    rows(out, values.len(), classes, dtype, labels.device())
}

/// Noise on y: with probability `smoothing` each label is replaced by a uniformly random class; returned
/// one-hot. Averaged over draws it is [`label_smoothing`].
pub fn label_noise(
    labels: &Tensor,
    classes: usize,
    smoothing: f64,
    dtype: DType,
    rng: &mut Rng,
) -> Result<Tensor> {
    let values = check_labels(labels, classes, smoothing)?;
    let mut out = vec![0.0; values.len() * classes];
    for (row, y) in values.iter().enumerate() {
        let class = if rng.uniform_f64(0.0, 1.0) < smoothing {
            ((rng.uniform_f64(0.0, 1.0) * classes as f64) as usize).min(classes - 1)
        } else {
            *y as usize
        };
        out[row * classes + class] = 1.0;
    }
    rows(out, values.len(), classes, dtype, labels.device())
}

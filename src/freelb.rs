//! FreeLB (Zhu et al.): K ascent steps on the embedding output, the weights' gradients averaged over
//! all K iterates.
//!
//! Each of the K forward-backward passes at `x + delta_t` both accumulates the weights' gradient (of
//! `L / K`) and gives the ascent direction for `delta_{t+1} = Pi(delta_t + adv_lr * d(g_t))`: per-sentence
//! `g / ||g||` (L2) or `sign(g)` (L-infinity), projected onto a ball of radius `max_norm` (0: none).
//! `delta_0` is zero (`init_mag = 0`) or uniform, scaled to `init_mag / sqrt(len * d)` per sentence (L2)
//! or to `[-init_mag, init_mag]` (L-infinity), padding excluded. Cost: K forward-backward passes.
//! A warm-up of N iterations trains plainly first (against early NaNs). Hold dropout masks fixed across
//! the K steps with [`crate::dropout::HeldDropout`]. Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART,
//! VAT".

use crate::ball::Ball;
use crate::error::{check_count, check_non_negative, check_positive};
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::step::{CleanPass, Passes, Step, plain, scale_all};
use crate::target::Target;
use crate::{Error, Result, Rng};
use candle_core::Tensor;

/// Free large-batch adversarial training.
#[derive(Clone, Debug)]
pub struct FreeLb {
    adv_lr: f64,
    steps: usize,
    init_mag: f64,
    max_norm: f64,
    norm: StepNorm,
    warmup: usize,
    iteration: usize,
}

impl FreeLb {
    /// `steps` = K ascent steps of size `adv_lr`, zero init, no projection, per-sentence L2, no warm-up.
    pub fn new(adv_lr: f64, steps: usize) -> Result<Self> {
        check_positive("adv_lr", adv_lr)?;
        check_count("steps", steps)?;
        Ok(Self {
            adv_lr,
            steps,
            init_mag: 0.0,
            max_norm: 0.0,
            norm: StepNorm::L2(Scope::PerExample),
            warmup: 0,
            iteration: 0,
        })
    }

    /// Magnitude of the random start (0: zero start).
    pub fn with_init_mag(mut self, init_mag: f64) -> Result<Self> {
        check_non_negative("init_mag", init_mag)?;
        self.init_mag = init_mag;
        Ok(self)
    }

    /// Radius of the projection (0: no projection).
    pub fn with_max_norm(mut self, max_norm: f64) -> Result<Self> {
        check_non_negative("max_norm", max_norm)?;
        self.max_norm = max_norm;
        Ok(self)
    }

    /// `StepNorm::L2(Scope::PerExample)` (per sentence, the default), `StepNorm::Sign` (L-infinity),
    /// or `StepNorm::L2(Scope::PerBatch)` (one norm for the whole point: the embedding-matrix form).
    pub fn with_norm(mut self, norm: StepNorm) -> Result<Self> {
        if norm == StepNorm::Raw {
            return Err(Error::InvalidArgument {
                name: "norm",
                reason: "FreeLB normalises its ascent steps, and StepNorm::Raw does not".into(),
                fix: "pass StepNorm::L2(Scope::PerExample), StepNorm::L2(Scope::PerBatch) or \
                      StepNorm::Sign"
                    .into(),
            });
        }
        self.norm = norm;
        Ok(self)
    }

    /// Train plainly for the first `iterations` calls of [`FreeLb::step`].
    pub fn with_warmup(mut self, iterations: usize) -> Self {
        self.warmup = iterations;
        self
    }

    /// The starting perturbation.
    pub fn initial(&self, target: &Target, rng: &mut Rng) -> Result<Tensor> {
        let p = target.point();
        if self.init_mag == 0.0 {
            return Ok(p.zeros_like()?);
        }
        match self.norm {
            StepNorm::Sign => {
                let u = rng.uniform(
                    -self.init_mag,
                    self.init_mag,
                    p.shape(),
                    p.dtype(),
                    p.device(),
                )?;
                target.apply_mask(&u)
            }
            StepNorm::L2(scope) => {
                let u = target.apply_mask(&rng.uniform(
                    -1.0,
                    1.0,
                    p.shape(),
                    p.dtype(),
                    p.device(),
                )?)?;
                // len * d per sentence (or the whole point): the number of unmasked entries.
                let ones = target.apply_mask(&p.ones_like()?)?;
                let entries = match scope {
                    Scope::PerExample => target.per_example_sum(&ones)?,
                    Scope::PerBatch => ones.sum_all()?,
                };
                Ok(u.broadcast_mul(&(entries.sqrt()?.recip()? * self.init_mag)?)?)
            }
            StepNorm::Raw => unreachable!("with_norm refuses StepNorm::Raw"),
        }
    }

    /// One ascent step from `delta` with gradient `g`.
    pub fn ascend(&self, target: &Target, delta: &Tensor, g: &Tensor) -> Result<Tensor> {
        let moved = (delta + (self.norm.direction(target, g)? * self.adv_lr)?)?;
        if self.max_norm > 0.0 {
            Ball::for_norm(self.norm, self.max_norm)?.project(target, &moved)
        } else {
            Ok(moved)
        }
    }
}

impl Method for FreeLb {
    /// One training step (K forward-backward passes, or one plain pass during warm-up).
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let target = batch.target();
        if !target.has_examples() && self.norm == StepNorm::L2(Scope::PerExample) {
            return Err(Error::InvalidArgument {
                name: "target",
                reason: "FreeLB normalises per sentence by default, and a weight target has no \
                         sentences"
                    .into(),
                fix: "use Target::embedding_output, or .with_norm(StepNorm::L2(Scope::PerBatch)) \
                      for the embedding matrix"
                    .into(),
            });
        }
        let loss_fn = |p: &Tensor| batch.loss_at(p);
        self.iteration += 1;
        if self.iteration <= self.warmup {
            return plain(target, &loss_fn);
        }
        let mut delta = self.initial(target, rng)?;
        let mut total: Option<Step> = None;
        for t in 0..self.steps {
            let pass = CleanPass::from(target.loss_and_gradient_at(&loss_fn, &delta)?);
            if t == 0 {
                batch.check_gradient(&pass.gradient)?;
            }
            if t + 1 < self.steps {
                delta = self.ascend(target, &delta, &pass.gradient)?;
            }
            total = Some(match total {
                None => Step {
                    loss: pass.loss.clone(),
                    clean_loss: pass.loss,
                    grads: pass.grads,
                    passes: Passes::default(),
                },
                Some(mut acc) => {
                    acc.grads.extend(pass.grads)?;
                    Step {
                        loss: (acc.loss + pass.loss)?,
                        ..acc
                    }
                }
            });
        }
        let mut step = total.expect("steps >= 1");
        let k = self.steps as f64;
        scale_all(&mut step.grads, 1.0 / k)?;
        Ok(Step {
            loss: (step.loss / k)?,
            passes: Passes {
                forward: self.steps,
                backward: self.steps,
                double_backward: 0,
            },
            ..step
        })
    }
}

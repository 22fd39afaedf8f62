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
use crate::grads::scale_all;
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::step::{Passes, Step, plain};
use crate::target::Target;
use crate::{Error, Result, Rng};
use candle_core::Tensor;

/// FreeLB's hyper-parameters. K = 3 ascent steps of size 0.1 as in Zhu et al. (2020)'s GLUE runs;
/// zero start, no projection, per-sentence L2 steps and no warm-up by default (the reference
/// implementation's `adv-init-mag`, `adv-max-norm` and warm-up are set per task).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreeLbConfig {
    /// The ascent step's size (`adv-lr`, > 0).
    pub adv_lr: f64,
    /// The number of ascent steps K (`adv-steps`, >= 1).
    pub steps: usize,
    /// The random start's magnitude (`adv-init-mag`, >= 0; 0: zero start).
    pub init_mag: f64,
    /// The projection's radius (`adv-max-norm`, >= 0; 0: no projection).
    pub max_norm: f64,
    /// `L2(PerExample)` (per sentence), `Sign` (L-infinity) or `L2(PerBatch)` (a weight target).
    pub norm: StepNorm,
    /// Plain training for the first `warmup` steps.
    pub warmup: usize,
}

impl Default for FreeLbConfig {
    fn default() -> Self {
        Self {
            adv_lr: 0.1,
            steps: 3,
            init_mag: 0.0,
            max_norm: 0.0,
            norm: StepNorm::L2(Scope::PerExample),
            warmup: 0,
        }
    }
}

impl FreeLbConfig {
    /// Checks every value; the one place FreeLB's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_positive("adv_lr", self.adv_lr)?;
        check_count("steps", self.steps)?;
        check_non_negative("init_mag", self.init_mag)?;
        check_non_negative("max_norm", self.max_norm)?;
        if self.norm == StepNorm::Raw {
            return Err(Error::InvalidArgument {
                name: "norm",
                reason: "FreeLB normalises its ascent steps, and StepNorm::Raw does not".into(),
                fix: "pass StepNorm::L2(Scope::PerExample), StepNorm::L2(Scope::PerBatch) or \
                      StepNorm::Sign"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Free large-batch adversarial training.
#[derive(Clone, Debug)]
pub struct FreeLb {
    config: FreeLbConfig,
    iteration: usize,
}

impl FreeLb {
    /// FreeLB with validated settings.
    pub fn from_config(config: FreeLbConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            iteration: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &FreeLbConfig {
        &self.config
    }

    /// `steps` = K ascent steps of size `adv_lr`, the other settings at their defaults
    /// ([`FreeLbConfig`]).
    pub fn new(adv_lr: f64, steps: usize) -> Result<Self> {
        Self::from_config(FreeLbConfig {
            adv_lr,
            steps,
            ..FreeLbConfig::default()
        })
    }

    /// Magnitude of the random start (0: zero start).
    pub fn with_init_mag(self, init_mag: f64) -> Result<Self> {
        Self::from_config(FreeLbConfig {
            init_mag,
            ..self.config
        })
    }

    /// Radius of the projection (0: no projection).
    pub fn with_max_norm(self, max_norm: f64) -> Result<Self> {
        Self::from_config(FreeLbConfig {
            max_norm,
            ..self.config
        })
    }

    /// `StepNorm::L2(Scope::PerExample)` (per sentence, the default), `StepNorm::Sign` (L-infinity),
    /// or `StepNorm::L2(Scope::PerBatch)` (one norm for the whole point: the embedding-matrix form).
    pub fn with_norm(self, norm: StepNorm) -> Result<Self> {
        Self::from_config(FreeLbConfig {
            norm,
            ..self.config
        })
    }

    /// Train plainly for the first `iterations` steps.
    pub fn with_warmup(mut self, iterations: usize) -> Self {
        self.config.warmup = iterations;
        self
    }

    /// The starting perturbation.
    pub fn initial(&self, target: &Target, rng: &mut Rng) -> Result<Tensor> {
        let p = target.point();
        if self.config.init_mag == 0.0 {
            return Ok(p.zeros_like()?);
        }
        match self.config.norm {
            StepNorm::Sign => {
                let u = rng.uniform(
                    -self.config.init_mag,
                    self.config.init_mag,
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
                Ok(u.broadcast_mul(&(entries.sqrt()?.recip()? * self.config.init_mag)?)?)
            }
            StepNorm::Raw => unreachable!("with_norm refuses StepNorm::Raw"),
        }
    }

    /// One ascent step from `delta` with gradient `g`.
    pub fn ascend(&self, target: &Target, delta: &Tensor, g: &Tensor) -> Result<Tensor> {
        let moved = (delta + (self.config.norm.direction(target, g)? * self.config.adv_lr)?)?;
        if self.config.max_norm > 0.0 {
            Ball::for_norm(self.config.norm, self.config.max_norm)?.project(target, &moved)
        } else {
            Ok(moved)
        }
    }
}

impl Method for FreeLb {
    /// One training step (K forward-backward passes, or one plain pass during warm-up).
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let target = batch.target();
        if !target.has_examples() && self.config.norm == StepNorm::L2(Scope::PerExample) {
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
        if self.iteration <= self.config.warmup {
            return plain(target, &loss_fn);
        }
        let mut delta = self.initial(target, rng)?;
        let mut total: Option<Step> = None;
        for t in 0..self.config.steps {
            let pass = target.clean_pass_at(&loss_fn, &delta)?;
            if t == 0 {
                batch.check_gradient(&pass.gradient)?;
            }
            if t + 1 < self.config.steps {
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
        let k = self.config.steps as f64;
        scale_all(&mut step.grads, 1.0 / k)?;
        Ok(Step {
            loss: (step.loss / k)?,
            passes: Passes {
                forward: self.config.steps,
                backward: self.config.steps,
                double_backward: 0,
            },
            ..step
        })
    }
}

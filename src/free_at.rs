//! FreeAT (Shafahi et al., "Adversarial training for free"): replay each batch m times, and let one
//! backward pass serve both the weights and the perturbation.
//!
//! Each replay is one forward-backward pass at `x + delta`: its weight gradients go to the optimiser,
//! its gradient with respect to `delta` moves the perturbation, `delta <- Pi(delta + eps * d(g))`, and
//! `delta` carries over to the next replay and the next batch. Batches of another shape (dynamic
//! padding, the last batch of an epoch) keep it: each dimension is cropped or zero-padded to the new
//! batch's ([`fit_to`]), so the examples and positions the two batches share keep their perturbation
//! and new ones start from zero. Train for epochs / m passes over the data: the cost per effective
//! epoch is that of plain training. Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT".

use crate::ball::Ball;
use crate::error::{check_count, check_non_negative};
use crate::method::{Batch, Method};
use crate::norm::StepNorm;
use crate::step::{Passes, Step};
use crate::{Result, Rng};
use candle_core::{Shape, Tensor};

/// FreeAT's hyper-parameters. The defaults are Shafahi et al. (2019)'s CIFAR-10 setting: m = 8
/// replays, sign steps of size eps = 8/255 (pixels in [0, 1]) in the L-infinity ball of the same
/// radius.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreeAtConfig {
    /// The step's size and the ball's radius eps (>= 0).
    pub eps: f64,
    /// How many times each batch is replayed, m (>= 1).
    pub replays: usize,
    /// The step geometry (its ball has radius eps).
    pub norm: StepNorm,
}

impl Default for FreeAtConfig {
    fn default() -> Self {
        Self {
            eps: 8.0 / 255.0,
            replays: 8,
            norm: StepNorm::Sign,
        }
    }
}

impl FreeAtConfig {
    /// Checks every value; the one place FreeAT's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        check_count("replays", self.replays)
    }
}

/// Free adversarial training: a training loop calls [`Method::step`] `replays()` times per batch,
/// with an optimiser update after each.
#[derive(Clone, Debug)]
pub struct FreeAt {
    config: FreeAtConfig,
    delta: Option<Tensor>,
}

impl FreeAt {
    /// FreeAT with validated settings.
    pub fn from_config(config: FreeAtConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            delta: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &FreeAtConfig {
        &self.config
    }

    /// Step and radius `eps`, `replays` = m, sign steps in the L-infinity ball (the paper's).
    pub fn new(eps: f64, replays: usize) -> Result<Self> {
        Self::from_config(FreeAtConfig {
            eps,
            replays,
            ..FreeAtConfig::default()
        })
    }

    /// Step geometry (its ball has radius eps).
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.config.norm = norm;
        self
    }

    /// The perturbation carried to the next replay.
    pub fn perturbation(&self) -> Option<&Tensor> {
        self.delta.as_ref()
    }
}

/// `delta` cropped or zero-padded, dimension by dimension, to `shape` (same rank); `None` when the
/// ranks differ.
pub fn fit_to(delta: &Tensor, shape: &Shape) -> Result<Option<Tensor>> {
    if delta.rank() != shape.rank() {
        return Ok(None);
    }
    let mut fitted = delta.clone();
    for (dim, &want) in shape.dims().iter().enumerate() {
        let have = fitted.dim(dim)?;
        if have > want {
            fitted = fitted.narrow(dim, 0, want)?;
        } else if have < want {
            fitted = fitted.pad_with_zeros(dim, 0, want - have)?;
        }
    }
    Ok(Some(fitted.contiguous()?))
}

impl Method for FreeAt {
    /// One replay: train at `x + delta` and move `delta`. `clean_loss` is the loss at `x + delta` too.
    fn step(&mut self, batch: &Batch, _rng: &mut Rng) -> Result<Step> {
        let target = batch.target();
        let p = target.point();
        let carried = match &self.delta {
            Some(d) if d.dtype() == p.dtype() => fit_to(d, p.shape())?,
            _ => None,
        };
        let delta = match carried {
            Some(d) => target.apply_mask(&d)?,
            None => p.zeros_like()?,
        };
        let loss_fn = |p: &Tensor| batch.loss_at(p);
        let pass = target.clean_pass_at(&loss_fn, &delta)?;
        batch.check_gradient(&pass.gradient)?;
        let moved =
            (&delta + (self.config.norm.direction(target, &pass.gradient)? * self.config.eps)?)?;
        self.delta =
            Some(Ball::for_norm(self.config.norm, self.config.eps)?.project(target, &moved)?);
        Ok(Step {
            loss: pass.loss.clone(),
            clean_loss: pass.loss,
            grads: pass.grads,
            passes: Passes {
                forward: 1,
                backward: 1,
                double_backward: 0,
            },
        })
    }

    /// m: each batch is replayed m times.
    fn replays(&self) -> usize {
        self.config.replays
    }
}

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
use crate::step::{CleanPass, Passes, Step};
use crate::{Result, Rng};
use candle_core::{Shape, Tensor};

/// Free adversarial training: a training loop calls [`Method::step`] `replays()` times per batch,
/// with an optimiser update after each.
#[derive(Clone, Debug)]
pub struct FreeAt {
    eps: f64,
    replays: usize,
    norm: StepNorm,
    delta: Option<Tensor>,
}

impl FreeAt {
    /// Step and radius `eps` (sign step, L-infinity ball, as in the paper), `replays` = m.
    pub fn new(eps: f64, replays: usize) -> Result<Self> {
        check_non_negative("eps", eps)?;
        check_count("replays", replays)?;
        Ok(Self {
            eps,
            replays,
            norm: StepNorm::Sign,
            delta: None,
        })
    }

    /// Step geometry (its ball has radius eps).
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.norm = norm;
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
        let pass = CleanPass::from(target.loss_and_gradient_at(&loss_fn, &delta)?);
        batch.check_gradient(&pass.gradient)?;
        let moved = (&delta + (self.norm.direction(target, &pass.gradient)? * self.eps)?)?;
        self.delta = Some(Ball::for_norm(self.norm, self.eps)?.project(target, &moved)?);
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
        self.replays
    }
}

//! FreeAT (Shafahi et al., "Adversarial training for free"): replay each batch m times, and let one
//! backward pass serve both the weights and the perturbation.
//!
//! Each replay is one forward-backward pass at `x + delta`: its weight gradients go to the optimiser,
//! its gradient with respect to `delta` moves the perturbation, `delta <- Pi(delta + eps * d(g))`, and
//! `delta` carries over to the next replay and the next batch (reset to zero when the batch's shape
//! changes). Train for epochs / m passes over the data: the cost per effective epoch is that of plain
//! training. Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT".

use crate::Result;
use crate::ball::Ball;
use crate::error::{check_count, check_non_negative};
use crate::norm::StepNorm;
use crate::step::{CleanPass, Passes, Step};
use crate::target::Target;
use candle_core::Tensor;

/// Free adversarial training: call [`FreeAt::step`] `replays()` times per batch, with an optimiser
/// update after each.
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

    /// How many times each batch is replayed.
    pub fn replays(&self) -> usize {
        self.replays
    }

    /// The perturbation carried to the next replay.
    pub fn perturbation(&self) -> Option<&Tensor> {
        self.delta.as_ref()
    }

    /// One replay: train at `x + delta` and move `delta`. `clean_loss` is the loss at `x + delta` too.
    pub fn step<F>(&mut self, target: &Target, loss_fn: &F) -> Result<Step>
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let p = target.point();
        let delta = match &self.delta {
            Some(d) if d.shape() == p.shape() && d.dtype() == p.dtype() => target.apply_mask(d)?,
            _ => p.zeros_like()?,
        };
        let pass = CleanPass::from(target.loss_and_gradient_at(loss_fn, &delta)?);
        target.check_gradient_value(&pass.gradient, true)?;
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
}

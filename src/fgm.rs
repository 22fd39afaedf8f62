//! FGM and FGSM: one gradient-ascent step on the perturbation, then train at the perturbed point.
//!
//! The step is `delta = eps * d(g)` with `g = dL/dx` and `d` the direction of a [`StepNorm`]: raw
//! `eps * g`, L2-normalised `eps * g / ||g||` (per example or per batch), or sign `eps * sign(g)` (FGSM).
//! `delta` is detached: the weights' gradient is taken at the perturbed point with `delta` held
//! constant, which to first order in eps is gradient penalty (see [`crate::norm`]). Two training
//! objectives, as the seeds use them: the adversarial loss alone, or clean + adversarial.
//! Cost: two forward and two backward passes per step. Book chapter: "FGM and gradient penalty".

use crate::error::check_non_negative;
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::step::{CleanPass, Objective, Passes, Step, combine};
use crate::target::Target;
use crate::{Result, Rng};
use candle_core::Tensor;

/// The fast gradient method.
#[derive(Clone, Copy, Debug)]
pub struct Fgm {
    eps: f64,
    norm: StepNorm,
    objective: Objective,
}

impl Fgm {
    /// FGM with step size `eps` (>= 0), L2-normalised per batch, clean + adversarial objective.
    pub fn new(eps: f64) -> Result<Self> {
        check_non_negative("eps", eps)?;
        Ok(Self {
            eps,
            norm: StepNorm::L2(Scope::PerBatch),
            objective: Objective::CleanPlusAdversarial,
        })
    }

    /// FGSM: the sign step `eps * sign(g)`.
    pub fn fgsm(eps: f64) -> Result<Self> {
        Ok(Self::new(eps)?.with_norm(StepNorm::Sign))
    }

    /// Sets the step geometry.
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.norm = norm;
        self
    }

    /// Sets the training objective.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }

    /// The step size.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The step geometry.
    pub fn norm(&self) -> StepNorm {
        self.norm
    }

    /// The perturbation `eps * d(g)` for a gradient `g` w.r.t. the target's point (detached); zero
    /// where `g` is zero.
    pub fn perturbation(&self, target: &Target, g: &Tensor) -> Result<Tensor> {
        Ok((self.norm.direction(target, g)? * self.eps)?)
    }
}

impl Method for Fgm {
    /// Clean forward-backward, the perturbation, adversarial forward-backward.
    fn step(&mut self, batch: &Batch, _rng: &mut Rng) -> Result<Step> {
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        // First order only: the clean pass is reduced to values at once (with second order on, candle
        // would otherwise keep its graph alive through the adversarial pass).
        let clean = CleanPass::from(target.loss_and_gradient(&loss_fn)?);
        batch.check_gradient(&clean.gradient)?;
        let delta = self.perturbation(target, &clean.gradient)?;
        let (adversarial, adversarial_grads) = target.gradients_at(&loss_fn, Some(&delta))?;
        let passes = Passes {
            forward: 2,
            backward: 2,
            double_backward: 0,
        };
        combine(
            self.objective,
            clean,
            &adversarial,
            adversarial_grads,
            passes,
        )
    }
}

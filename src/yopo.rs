//! YOPO-m-n (Zhang et al., "You only propagate once"): m full forward-backward passes per batch, and
//! after each, n cheap updates of the perturbation through the first layer only.
//!
//! Write the model as `rest(first(x))`. Pontryagin's maximum principle says the perturbation, which
//! enters through the first layer only, sees the rest of the network through the co-state
//! `p = dL/dz` at `z = first(x + delta)`. With p frozen, the ascent direction is
//! `grad_delta (p . first(x + delta))`, which costs a pass through the first layer alone. So:
//! for each of m full passes, compute p and the weights' gradients; then take n steps
//! `delta <- Pi(delta + alpha * d(grad_delta (p . first(x + delta))))`. The weights are trained on the
//! mean of the m full passes' gradients (the paper also adds the first layer's gradients from the inner
//! steps; omitted here). Caveat: the derivation assumes `rest` is twice differentiable. With ReLU the
//! frozen co-state is exact only while no unit changes sign, so large inner steps drift from true PGD.
//! Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT".

use crate::ball::Ball;
use crate::error::{check_count, check_non_negative, check_positive};
use crate::grads::{detach_all, scale_all};
use crate::method::{Batch, Method};
use crate::norm::StepNorm;
use crate::pgd::Start;
use crate::step::{Passes, Step};
use crate::{Error, Result, Rng};
use candle_core::{Tensor, Var};

/// YOPO's hyper-parameters. The defaults are Zhang et al. (2019)'s YOPO-5-3 on CIFAR-10: m = 5 full
/// passes, n = 3 first-layer steps of size alpha = 2/255 in the L-infinity ball of radius eps = 8/255
/// (pixels in [0, 1]), from zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YopoConfig {
    /// The ball's radius eps (>= 0).
    pub eps: f64,
    /// The inner step's size alpha (> 0).
    pub alpha: f64,
    /// Full passes m (>= 1).
    pub outer: usize,
    /// First-layer steps per full pass n (>= 1).
    pub inner: usize,
    /// Step geometry (L2 ball for `L2`, L-infinity for `Sign`).
    pub norm: StepNorm,
    /// Zero or random start.
    pub start: Start,
}

impl Default for YopoConfig {
    fn default() -> Self {
        Self {
            eps: 8.0 / 255.0,
            alpha: 2.0 / 255.0,
            outer: 5,
            inner: 3,
            norm: StepNorm::Sign,
            start: Start::Zero,
        }
    }
}

impl YopoConfig {
    /// Checks every value; the one place YOPO's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        check_positive("alpha", self.alpha)?;
        check_count("outer", self.outer)?;
        check_count("inner", self.inner)
    }
}

/// YOPO-m-n.
#[derive(Clone, Copy, Debug)]
pub struct Yopo {
    config: YopoConfig,
}

impl Yopo {
    /// YOPO with validated settings.
    pub fn from_config(config: YopoConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &YopoConfig {
        &self.config
    }

    /// `outer` = m full passes, `inner` = n first-layer steps of size `alpha`, in a ball of radius
    /// `eps`, the other settings at their defaults ([`YopoConfig`]: sign steps, zero start).
    pub fn new(eps: f64, alpha: f64, outer: usize, inner: usize) -> Result<Self> {
        Self::from_config(YopoConfig {
            eps,
            alpha,
            outer,
            inner,
            ..YopoConfig::default()
        })
    }

    /// Step geometry (L2 ball for `L2`, L-infinity for `Sign`).
    pub fn with_norm(mut self, norm: StepNorm) -> Self {
        self.config.norm = norm;
        self
    }

    /// Zero or random start.
    pub fn with_start(mut self, start: Start) -> Self {
        self.config.start = start;
        self
    }

    /// One training step; returns it with the final perturbation. The batch's first layer maps the
    /// perturbed point to the first layer's output z, its rest maps z to the scalar loss.
    pub fn run(&self, batch: &Batch, rng: &mut Rng) -> Result<(Step, Tensor)> {
        let target = batch.target();
        target.refuse_in_place()?;
        let (first, rest) = batch.first_layer("YOPO")?;
        let ball = Ball::for_norm(self.config.norm, self.config.eps)?;
        let mut delta = match self.config.start {
            Start::Zero => target.point().zeros_like()?,
            Start::Random => ball.random_point(target, rng)?,
        };
        let mut total: Option<Step> = None;
        for _ in 0..self.config.outer {
            // Full pass: the weights' gradients and the co-state p = dL/dz.
            let z = first(&target.perturb(&delta)?)?;
            let z_probe = Var::zeros(z.shape(), z.dtype(), z.device())?;
            let loss = rest(&(&z + z_probe.as_tensor())?)?;
            if loss.elem_count() != 1 {
                return Err(Error::ShapeMismatch {
                    name: "rest",
                    expected: "a scalar loss".into(),
                    got: loss.dims().to_vec(),
                });
            }
            let mut grads = crate::fused::backward_first_order(&loss)?;
            let costate = grads
                .remove(z_probe.as_tensor())
                .ok_or_else(|| Error::NoGradient {
                    target: "first layer's output (through rest)".into(),
                })?
                .detach();
            detach_all(&mut grads);
            // n cheap steps through the first layer only.
            for inner in 0..self.config.inner {
                let hamiltonian = |point: &Tensor| (first(point)? * &costate)?.sum_all();
                let g = target
                    .point_gradient_at(&hamiltonian, &delta)?
                    .gradient
                    .detach();
                if total.is_none() && inner == 0 {
                    batch.check_gradient(&g)?;
                }
                let moved =
                    (&delta + (self.config.norm.direction(target, &g)? * self.config.alpha)?)?;
                delta = ball.project(target, &moved)?;
            }
            let loss = loss.detach().reshape(())?;
            total = Some(match total {
                None => Step {
                    loss: loss.clone(),
                    clean_loss: loss,
                    grads,
                    passes: Passes::default(),
                },
                Some(mut acc) => {
                    acc.grads.extend(grads)?;
                    Step {
                        loss: (acc.loss + loss)?,
                        ..acc
                    }
                }
            });
        }
        let mut step = total.expect("outer >= 1");
        let m = self.config.outer as f64;
        scale_all(&mut step.grads, 1.0 / m)?;
        let step = Step {
            loss: (step.loss / m)?,
            passes: Passes {
                forward: self.config.outer,
                backward: self.config.outer,
                double_backward: 0,
            },
            ..step
        };
        Ok((step, delta))
    }
}

impl Method for Yopo {
    /// One training step: m full passes (plus m * n passes through the first layer only).
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        Ok(self.run(batch, rng)?.0)
    }
}

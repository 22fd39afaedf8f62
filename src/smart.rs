//! SMART (Jiang et al.): a smoothness-inducing adversarial regulariser, and the Bregman proximal point
//! step.
//!
//! The regulariser is `lambda_s * max_{delta} l_s(f(x + delta), f(x))` with `l_s` the symmetric KL of the
//! output distributions (classification) or the squared error (regression), both sides depending on the
//! weights. The inner max starts from Gaussian noise of standard deviation `noise_std` (1e-5) and takes K normalised ascent
//! steps of size `step_size` (1e-3), projected onto a ball of radius `eps` when `eps > 0`. Like target
//! shift, it needs no labels. The Bregman proximal point step adds `mu * l_s(f(x; theta), f(x; theta~))`,
//! with `theta~` an exponential moving average of the weights: a trust region in output space
//! ([`BregmanProximal`]). Book chapter: "PGD, FreeAT, YOPO, FreeLB, SMART, VAT".

use crate::ball::Ball;
use crate::error::{check_count, check_non_negative, check_positive};
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::regulariser::{Penalty, Regulariser};
use crate::step::{Passes, Step};
use crate::target::Target;
use crate::{Error, Result, Rng};
use candle_core::{D, Tensor, Var};

/// The output divergence `l_s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmartDivergence {
    /// `KL(P || Q) + KL(Q || P)` of the softmax distributions of two logit tensors.
    SymmetricKl,
    /// `||a - b||^2` (regression outputs).
    SquaredError,
}

impl SmartDivergence {
    /// `l_s(a, b)` for outputs `(batch, k)`: summed over outputs, averaged over the batch.
    pub fn loss(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.shape() != b.shape() || a.rank() != 2 {
            return Err(Error::ShapeMismatch {
                name: "outputs",
                expected: format!(
                    "two (batch, k) tensors of one shape, first is {:?}",
                    a.dims()
                ),
                got: b.dims().to_vec(),
            });
        }
        match self {
            SmartDivergence::SquaredError => Ok((a - b)?.sqr()?.sum(D::Minus1)?.mean_all()?),
            SmartDivergence::SymmetricKl => crate::divergence::symmetric_kl_from_logits(a, b),
        }
    }
}

/// SMART's hyper-parameters. The defaults are the reference implementation's (mt-dnn): weight
/// lambda_s = 1 (`adv_alpha`), K = 1 ascent step (`adv_k`) of size 1e-3 (`adv_step_size`) from noise
/// of standard deviation 1e-5 (`adv_noise_var`: despite its name, mt-dnn's `generate_noise` draws
/// `N(0, 1) * noise_var`, so it is a standard deviation), the symmetric KL; per-example L2 steps
/// without projection (`eps` = 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmartConfig {
    /// The regulariser's weight lambda_s (>= 0).
    pub lambda: f64,
    /// Ascent steps K (>= 1).
    pub steps: usize,
    /// The ascent step's size (> 0).
    pub step_size: f64,
    /// The starting noise's standard deviation per coordinate (>= 0).
    pub noise_std: f64,
    /// The projection's radius (>= 0; 0: none).
    pub eps: f64,
    /// The ascent step's geometry.
    pub norm: StepNorm,
    /// The output divergence `l_s`.
    pub divergence: SmartDivergence,
}

impl Default for SmartConfig {
    fn default() -> Self {
        Self {
            lambda: 1.0,
            steps: 1,
            step_size: 1e-3,
            noise_std: 1e-5,
            eps: 0.0,
            norm: StepNorm::L2(Scope::PerExample),
            divergence: SmartDivergence::SymmetricKl,
        }
    }
}

impl SmartConfig {
    /// Checks every value; the one place SMART's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("lambda", self.lambda)?;
        check_count("steps", self.steps)?;
        check_positive("step_size", self.step_size)?;
        check_non_negative("noise_std", self.noise_std)?;
        check_non_negative("eps", self.eps)
    }
}

/// The SMART regulariser.
#[derive(Clone, Copy, Debug)]
pub struct Smart {
    config: SmartConfig,
}

impl Smart {
    /// SMART with validated settings.
    pub fn from_config(config: SmartConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &SmartConfig {
        &self.config
    }

    /// Weight `lambda` (lambda_s) and the divergence, the other settings at their defaults
    /// ([`SmartConfig`]).
    pub fn new(lambda: f64, divergence: SmartDivergence) -> Result<Self> {
        Self::from_config(SmartConfig {
            lambda,
            divergence,
            ..SmartConfig::default()
        })
    }

    /// K ascent steps.
    pub fn with_steps(self, steps: usize) -> Result<Self> {
        Self::from_config(SmartConfig {
            steps,
            ..self.config
        })
    }

    /// The ascent step size.
    pub fn with_step_size(self, step_size: f64) -> Result<Self> {
        Self::from_config(SmartConfig {
            step_size,
            ..self.config
        })
    }

    /// Standard deviation of the starting noise (mt-dnn's `adv_noise_var`).
    pub fn with_noise_std(self, noise_std: f64) -> Result<Self> {
        Self::from_config(SmartConfig {
            noise_std,
            ..self.config
        })
    }

    /// Projection radius (0: none) and step geometry.
    pub fn with_ball(self, eps: f64, norm: StepNorm) -> Result<Self> {
        Self::from_config(SmartConfig {
            eps,
            norm,
            ..self.config
        })
    }

    /// `l_s(f(x + r), f(x))` for a given `r`, differentiable in `r` and the weights.
    pub fn divergence_at<G>(&self, target: &Target, output_fn: &G, r: &Tensor) -> Result<Tensor>
    where
        G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let clean = output_fn(target.point())?;
        self.config
            .divergence
            .loss(&output_fn(&target.perturb(r)?)?, &clean)
    }

    /// The inner maximisation: the final perturbation, from the clean outputs. The first ascent
    /// gradient is checked as `batch` says.
    pub fn attack(&self, batch: &Batch, clean: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let target = batch.target();
        target.refuse_in_place()?;
        let (output_fn, _) = batch.outputs_and_task("SMART")?;
        let p = target.point();
        let reference = clean.detach();
        let mut delta = target.apply_mask(
            &(rng.normal(p.shape(), p.dtype(), p.device())? * self.config.noise_std)?,
        )?;
        for step in 0..self.config.steps {
            let divergence = |point: &Tensor| -> candle_core::Result<Tensor> {
                Ok(self
                    .config
                    .divergence
                    .loss(&output_fn(point)?, &reference)?)
            };
            let g = target
                .point_gradient_at(&divergence, &delta)?
                .gradient
                .detach();
            if step == 0 {
                batch.check_gradient_finite(&g)?;
            }
            delta = (&delta + (self.config.norm.direction(target, &g)? * self.config.step_size)?)?;
            if self.config.eps > 0.0 {
                delta =
                    Ball::for_norm(self.config.norm, self.config.eps)?.project(target, &delta)?;
            }
        }
        Ok(delta)
    }

    /// The regulariser `lambda * l_s(f(x + delta*), f(x))` at clean outputs `clean` (with their graph).
    pub fn regulariser(&self, batch: &Batch, clean: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let (output_fn, _) = batch.outputs_and_task("SMART")?;
        let delta = self.attack(batch, clean, rng)?;
        let adversarial = output_fn(&batch.target().perturb(&delta)?)?;
        Ok((self.config.divergence.loss(&adversarial, clean)? * self.config.lambda)?)
    }

    fn passes(&self) -> Passes {
        Passes {
            forward: 2 + self.config.steps,
            backward: 1 + self.config.steps,
            double_backward: 0,
        }
    }
}

impl Method for Smart {
    /// One step on `task(f(x)) + regulariser`.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let (output_fn, task) = batch.outputs_and_task("SMART")?;
        let clean_outputs = output_fn(batch.target().point())?;
        let clean = task(&clean_outputs)?;
        let regulariser = self.regulariser(batch, &clean_outputs, rng)?;
        Step::from_objective(&(&clean + regulariser)?, &clean, self.passes())
    }
}

impl Regulariser for Smart {
    /// The smoothness term alone, at the batch's clean outputs.
    fn penalty(&self, batch: &Batch, rng: &mut Rng) -> Result<Penalty> {
        let (output_fn, _) = batch.outputs_and_task("SMART")?;
        let clean_outputs = output_fn(batch.target().point())?;
        Ok(Penalty {
            value: self.regulariser(batch, &clean_outputs, rng)?,
            passes: self.passes(),
        })
    }
}

/// The Bregman proximal point (momentum) step: `mu * l_s(f(x; theta), f(x; theta~))` with `theta~` the
/// exponential moving average `theta~ <- (1 - beta) theta + beta theta~` of the weights.
pub struct BregmanProximal {
    mu: f64,
    beta: f64,
    vars: Vec<Var>,
    anchor: Vec<Tensor>,
}

impl BregmanProximal {
    /// The anchor starts at the current weights of `vars`.
    pub fn new(vars: Vec<Var>, mu: f64, beta: f64) -> Result<Self> {
        check_non_negative("mu", mu)?;
        if !(0.0..1.0).contains(&beta) {
            return Err(Error::InvalidArgument {
                name: "beta",
                reason: format!("a momentum lies in [0, 1), got {beta}"),
                fix: "pass 0 <= beta < 1 (0.99 in the paper)".into(),
            });
        }
        let anchor = vars
            .iter()
            .map(|v| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            mu,
            beta,
            vars,
            anchor,
        })
    }

    /// The anchor weights theta~.
    pub fn anchor(&self) -> &[Tensor] {
        &self.anchor
    }

    /// `outputs_fn()` evaluated with the anchor weights (detached); the current weights are restored.
    pub fn anchor_outputs<G>(&self, outputs_fn: G) -> Result<Tensor>
    where
        G: Fn() -> candle_core::Result<Tensor>,
    {
        let current = self
            .vars
            .iter()
            .map(|v| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (v, a) in self.vars.iter().zip(&self.anchor) {
            v.set(a)?;
        }
        let outputs = outputs_fn().map(|o| o.detach());
        for (v, c) in self.vars.iter().zip(&current) {
            v.set(c)?;
        }
        Ok(outputs?)
    }

    /// The penalty `mu * l_s(outputs, anchor_outputs)`, differentiable in `outputs`.
    pub fn penalty(
        &self,
        divergence: SmartDivergence,
        outputs: &Tensor,
        anchor_outputs: &Tensor,
    ) -> Result<Tensor> {
        Ok((divergence.loss(outputs, anchor_outputs)? * self.mu)?)
    }

    /// After the optimiser step: `theta~ <- (1 - beta) theta + beta theta~`.
    pub fn update(&mut self) -> Result<()> {
        for (v, a) in self.vars.iter().zip(self.anchor.iter_mut()) {
            *a = ((v.as_tensor().detach() * (1.0 - self.beta))? + (&*a * self.beta)?)?;
        }
        Ok(())
    }
}

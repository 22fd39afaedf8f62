//! VAT (Miyato et al.): virtual adversarial training, the label-free adversarial direction.
//!
//! With `p = softmax(f(x))` held fixed, `D(r) = KL(p || softmax(f(x + r)))` is zero with zero gradient at
//! r = 0, so its second-order term, the curvature `r^T H r`, is what an adversary maximises: the top
//! eigenvector of H. Power iteration finds it without H: `d <- normalize(grad_r D(r) at r = xi d)`,
//! since that gradient is `xi H d + O(xi^2)`. The regulariser is `KL(p || softmax(f(x + eps d)))` with
//! `d` detached: it needs no labels, so it serves semi-supervised learning. Cost: the clean forward, one
//! forward-backward per power iteration, then the regulariser's forward (and its share of the
//! backward). Book chapter: "Target shift" (the link to semi-supervised learning) and "PGD, FreeAT, YOPO,
//! FreeLB, SMART, VAT".

use crate::divergence::kl_from_logits;
use crate::error::{check_count, check_non_negative, check_positive};
use crate::method::{Batch, Method};
use crate::norm::{Scope, StepNorm};
use crate::regulariser::{Penalty, Regulariser};
use crate::step::{Passes, Step};
use crate::{Result, Rng};
use candle_core::Tensor;

/// VAT's hyper-parameters. The defaults are Miyato et al. (2018)'s: radius eps = 8 (their CIFAR-10
/// setting; eps is set per data set), xi = 1e-6, one power iteration, weight (their alpha) 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VatConfig {
    /// The virtual adversarial perturbation's radius eps (>= 0).
    pub eps: f64,
    /// The finite-difference step xi (> 0; 1e-6 in f64, about 1e-2 in f32, where rounding sets
    /// the floor).
    pub xi: f64,
    /// Power iterations per step (>= 1).
    pub power_iterations: usize,
    /// The regulariser's weight (the paper's alpha, >= 0).
    pub weight: f64,
}

impl Default for VatConfig {
    fn default() -> Self {
        Self {
            eps: 8.0,
            xi: 1e-6,
            power_iterations: 1,
            weight: 1.0,
        }
    }
}

impl VatConfig {
    /// Checks every value; the one place VAT's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("eps", self.eps)?;
        check_positive("xi", self.xi)?;
        check_count("power_iterations", self.power_iterations)?;
        check_non_negative("weight", self.weight)
    }
}

/// Virtual adversarial training.
#[derive(Clone, Copy, Debug)]
pub struct Vat {
    config: VatConfig,
}

impl Vat {
    /// VAT with validated settings.
    pub fn from_config(config: VatConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &VatConfig {
        &self.config
    }

    /// Radius `eps`, the other settings at their defaults ([`VatConfig`]).
    pub fn new(eps: f64) -> Result<Self> {
        Self::from_config(VatConfig {
            eps,
            ..VatConfig::default()
        })
    }

    /// The finite-difference step.
    pub fn with_xi(self, xi: f64) -> Result<Self> {
        Self::from_config(VatConfig { xi, ..self.config })
    }

    /// Power iterations per step.
    pub fn with_power_iterations(self, power_iterations: usize) -> Result<Self> {
        Self::from_config(VatConfig {
            power_iterations,
            ..self.config
        })
    }

    /// The regulariser's weight (the paper's alpha).
    pub fn with_weight(self, weight: f64) -> Result<Self> {
        Self::from_config(VatConfig {
            weight,
            ..self.config
        })
    }

    /// The unit direction `d` (per example) after the power iterations, from clean logits. The first
    /// power iteration's gradient is checked as `batch` says.
    pub fn direction(&self, batch: &Batch, clean_logits: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let target = batch.target();
        target.refuse_in_place()?;
        target.require_examples("VAT (a unit direction per example)")?;
        let (logits_fn, _) = batch.outputs_and_task("VAT")?;
        let unit = StepNorm::L2(Scope::PerExample);
        let p = target.point();
        let reference = clean_logits.detach();
        let mut d = unit.direction(
            target,
            &target.apply_mask(&rng.normal(p.shape(), p.dtype(), p.device())?)?,
        )?;
        for iteration in 0..self.config.power_iterations {
            let kl = |point: &Tensor| -> candle_core::Result<Tensor> {
                Ok(kl_from_logits(&reference, &logits_fn(point)?)?)
            };
            let g = target
                .point_gradient_at(&kl, &(&d * self.config.xi)?)?
                .gradient
                .detach();
            if iteration == 0 {
                batch.check_gradient_finite(&g)?;
            }
            d = unit.direction(target, &g)?;
        }
        Ok(d)
    }

    /// `r_vadv = eps * d`.
    pub fn perturbation(
        &self,
        batch: &Batch,
        clean_logits: &Tensor,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        Ok((self.direction(batch, clean_logits, rng)? * self.config.eps)?)
    }

    /// `weight * KL(p(x) || p(x + r_vadv))` with p(x) and r_vadv held fixed; no labels needed.
    pub fn regulariser(
        &self,
        batch: &Batch,
        clean_logits: &Tensor,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let (logits_fn, _) = batch.outputs_and_task("VAT")?;
        let r = self.perturbation(batch, clean_logits, rng)?;
        let logits = logits_fn(&batch.target().perturb(&r)?)?;
        Ok((kl_from_logits(&clean_logits.detach(), &logits)? * self.config.weight)?)
    }

    fn passes(&self) -> Passes {
        Passes {
            forward: 2 + self.config.power_iterations,
            backward: 1 + self.config.power_iterations,
            double_backward: 0,
        }
    }
}

impl Method for Vat {
    /// One step on `task(f(x)) + regulariser` (a zero task loss for unlabelled batches).
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let (logits_fn, task) = batch.outputs_and_task("VAT")?;
        let clean_logits = logits_fn(batch.target().point())?;
        let clean = task(&clean_logits)?;
        let objective = (&clean + self.regulariser(batch, &clean_logits, rng)?)?;
        Step::from_objective(&objective, &clean, self.passes())
    }
}

impl Regulariser for Vat {
    /// The virtual adversarial term alone.
    fn penalty(&self, batch: &Batch, rng: &mut Rng) -> Result<Penalty> {
        let (logits_fn, _) = batch.outputs_and_task("VAT")?;
        let clean_logits = logits_fn(batch.target().point())?.detach();
        Ok(Penalty {
            value: self.regulariser(batch, &clean_logits, rng)?,
            passes: self.passes(),
        })
    }
}

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

/// Virtual adversarial training.
#[derive(Clone, Copy, Debug)]
pub struct Vat {
    eps: f64,
    xi: f64,
    power_iterations: usize,
    weight: f64,
}

impl Vat {
    /// Radius `eps`, finite-difference step xi = 1e-6, one power iteration (Miyato et al., 2018),
    /// regulariser weight 1.
    pub fn new(eps: f64) -> Result<Self> {
        check_non_negative("eps", eps)?;
        Ok(Self {
            eps,
            xi: 1e-6,
            power_iterations: 1,
            weight: 1.0,
        })
    }

    /// The finite-difference step (1e-6 in f64; about 1e-2 in f32, where rounding sets the floor).
    pub fn with_xi(mut self, xi: f64) -> Result<Self> {
        check_positive("xi", xi)?;
        self.xi = xi;
        Ok(self)
    }

    /// Power iterations per step.
    pub fn with_power_iterations(mut self, n: usize) -> Result<Self> {
        check_count("power_iterations", n)?;
        self.power_iterations = n;
        Ok(self)
    }

    /// The regulariser's weight (the paper's alpha).
    pub fn with_weight(mut self, weight: f64) -> Result<Self> {
        check_non_negative("weight", weight)?;
        self.weight = weight;
        Ok(self)
    }

    /// The unit direction `d` (per example) after the power iterations, from clean logits. The first
    /// power iteration's gradient is checked as `batch` says.
    pub fn direction(&self, batch: &Batch, clean_logits: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let target = batch.target();
        let (logits_fn, _) = batch.outputs_and_task("VAT")?;
        let unit = StepNorm::L2(Scope::PerExample);
        let p = target.point();
        let reference = clean_logits.detach();
        let mut d = unit.direction(
            target,
            &target.apply_mask(&rng.normal(p.shape(), p.dtype(), p.device())?)?,
        )?;
        for iteration in 0..self.power_iterations {
            let kl = |point: &Tensor| -> candle_core::Result<Tensor> {
                Ok(kl_from_logits(&reference, &logits_fn(point)?)?)
            };
            let g = target
                .point_gradient_at(&kl, &(&d * self.xi)?)?
                .gradient
                .detach();
            if iteration == 0 {
                batch.check_gradient(&g)?;
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
        Ok((self.direction(batch, clean_logits, rng)? * self.eps)?)
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
        Ok((kl_from_logits(&clean_logits.detach(), &logits)? * self.weight)?)
    }

    fn passes(&self) -> Passes {
        Passes {
            forward: 2 + self.power_iterations,
            backward: 1 + self.power_iterations,
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

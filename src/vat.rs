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

use crate::error::{check_count, check_non_negative, check_positive};
use crate::norm::{Scope, StepNorm};
use crate::step::{Passes, Step};
use crate::target::Target;
use crate::{Error, Result, Rng};
use candle_core::{D, Tensor};

/// `KL(softmax(reference) || softmax(logits))`, summed over classes and averaged over the batch; the
/// reference is taken as given (detach it for VAT).
pub fn kl_from_logits(reference: &Tensor, logits: &Tensor) -> Result<Tensor> {
    if reference.shape() != logits.shape() || logits.rank() != 2 {
        return Err(Error::ShapeMismatch {
            name: "logits",
            expected: format!("(batch, classes) like the reference {:?}", reference.dims()),
            got: logits.dims().to_vec(),
        });
    }
    let log_p = candle_nn::ops::log_softmax(reference, D::Minus1)?;
    let log_q = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((log_p.exp()? * (log_p - log_q)?)?
        .sum(D::Minus1)?
        .mean_all()?)
}

/// Virtual adversarial training.
#[derive(Clone, Copy, Debug)]
pub struct Vat {
    eps: f64,
    xi: f64,
    power_iterations: usize,
    alpha: f64,
}

impl Vat {
    /// Radius `eps`, finite-difference step xi = 1e-6, one power iteration, weight alpha = 1.
    pub fn new(eps: f64) -> Result<Self> {
        check_non_negative("eps", eps)?;
        Ok(Self {
            eps,
            xi: 1e-6,
            power_iterations: 1,
            alpha: 1.0,
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

    /// The regulariser's weight alpha.
    pub fn with_alpha(mut self, alpha: f64) -> Result<Self> {
        check_non_negative("alpha", alpha)?;
        self.alpha = alpha;
        Ok(self)
    }

    /// The unit direction `d` (per example) after the power iterations, from clean logits.
    pub fn direction<G>(
        &self,
        target: &Target,
        logits_fn: &G,
        clean_logits: &Tensor,
        rng: &mut Rng,
    ) -> Result<Tensor>
    where
        G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let unit = StepNorm::L2(Scope::PerExample);
        let p = target.point();
        let reference = clean_logits.detach();
        let mut d = unit.direction(
            target,
            &target.apply_mask(&rng.normal(p.shape(), p.dtype(), p.device())?)?,
        )?;
        for _ in 0..self.power_iterations {
            let kl = |point: &Tensor| -> candle_core::Result<Tensor> {
                Ok(kl_from_logits(&reference, &logits_fn(point)?)?)
            };
            let g = target
                .point_gradient_at(&kl, &(&d * self.xi)?)?
                .gradient
                .detach();
            target.check_gradient_value(&g, true)?;
            d = unit.direction(target, &g)?;
        }
        Ok(d)
    }

    /// `r_vadv = eps * d`.
    pub fn perturbation<G>(
        &self,
        target: &Target,
        logits_fn: &G,
        clean_logits: &Tensor,
        rng: &mut Rng,
    ) -> Result<Tensor>
    where
        G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        Ok((self.direction(target, logits_fn, clean_logits, rng)? * self.eps)?)
    }

    /// `alpha * KL(p(x) || p(x + r_vadv))` with p(x) and r_vadv held fixed; no labels needed.
    pub fn regulariser<G>(
        &self,
        target: &Target,
        logits_fn: &G,
        clean_logits: &Tensor,
        rng: &mut Rng,
    ) -> Result<Tensor>
    where
        G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let r = self.perturbation(target, logits_fn, clean_logits, rng)?;
        let logits = logits_fn(&target.perturb(&r)?)?;
        Ok((kl_from_logits(&clean_logits.detach(), &logits)? * self.alpha)?)
    }

    /// One training step on `task_loss(f(x)) + regulariser` (pass a zero task loss for unlabelled
    /// batches).
    pub fn step<G, L>(
        &self,
        target: &Target,
        logits_fn: &G,
        task_loss: &L,
        rng: &mut Rng,
    ) -> Result<Step>
    where
        G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
        L: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let clean_logits = logits_fn(target.point())?;
        let clean = task_loss(&clean_logits)?;
        let objective = (&clean + self.regulariser(target, logits_fn, &clean_logits, rng)?)?;
        let passes = Passes {
            forward: 2 + self.power_iterations,
            backward: 1 + self.power_iterations,
            double_backward: 0,
        };
        Step::from_objective(&objective, &clean, passes)
    }
}

//! Target shift: smoothness of the model's outputs, `l(f(x + e), f(x))`, and its gradient-penalty form.
//!
//! Replacing `l(f(x + e), y)` by the upper bound `l(f(x + e), f(x)) + l(f(x), y)` (triangle or Jensen
//! inequality) and integrating the noise out gives (eq. (7)-(8) of the seed article on generalisation)
//!
//! `E[l(f(x + e), f(x))] = sigma^2/2 * sum_i lambda_i ||grad_x f_i||^2 + O(sigma^3)`,
//!
//! with `lambda_i = 2` for the squared error and `lambda_i = 1/f_i` for `KL(f(x) || f(x + e))`. The sum
//! over outputs costs one backward per output; eq. (9) replaces it by one backward of a random
//! projection: `sum_i ||grad f_i||^2 = E_eta ||grad (eta . f)||^2` for `eta` with `E[eta eta^T] = I`
//! (here Rademacher, eta_i in {-1, +1}).
//!
//! The weights `lambda_i` are folded in exactly by a transform `phi` with `phi'(f)^2 = lambda(f)`:
//! `phi(f) = sqrt(2) f` for the squared error and `phi(f) = 2 sqrt(f)` for KL, so
//! `sum_i lambda_i ||grad f_i||^2 = sum_i ||grad phi(f_i)||^2`, trainable through `lambda` too.
//! All quantities are averaged over the batch, like the losses. Book chapter: "Target shift".

use crate::error::{check_count, check_non_negative};
use crate::method::{Batch, Method};
use crate::regulariser::{Penalty, Regulariser};
use crate::step::{Passes, Step};
use crate::target::Target;
use crate::{Error, Result, Rng, second_order};
use candle_core::{D, Tensor};

/// The output divergence `l(f(x + e), f(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// `||f(x + e) - f(x)||^2` (lambda = 2).
    SquaredError,
    /// `KL(f(x) || f(x + e))` for probability outputs (lambda_i = 1 / f_i).
    KullbackLeibler,
}

impl Divergence {
    /// `l(perturbed, reference)`: summed over outputs, averaged over the batch. Outputs are `(b, k)`.
    pub fn loss(&self, perturbed: &Tensor, reference: &Tensor) -> Result<Tensor> {
        Ok(self.per_example(perturbed, reference)?.mean_all()?)
    }

    /// `l(perturbed_b, reference_b)` for each example, `(b,)`; `reference` may be one row `(1, k)`.
    pub fn per_example(&self, perturbed: &Tensor, reference: &Tensor) -> Result<Tensor> {
        check_outputs(perturbed)?;
        let (b, k) = perturbed.dims2()?;
        if reference.dims() != [b, k] && reference.dims() != [1, k] {
            return Err(Error::ShapeMismatch {
                name: "reference",
                expected: format!("({b}, {k}) or (1, {k})"),
                got: reference.dims().to_vec(),
            });
        }
        let per_output = match self {
            Divergence::SquaredError => perturbed.broadcast_sub(reference)?.sqr()?,
            Divergence::KullbackLeibler => {
                return crate::divergence::kl_from_probabilities(perturbed, reference);
            }
        };
        Ok(per_output.sum(D::Minus1)?)
    }

    /// `phi(f)` with `phi'(f)^2 = lambda(f)`. The KL form takes probabilities: on the CPU, outputs
    /// outside (0, 1] are an error (logits would give NaN through the square root, and a zero an
    /// infinite gradient).
    pub fn transform(&self, outputs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Divergence::SquaredError => (outputs * 2f64.sqrt())?,
            Divergence::KullbackLeibler => {
                check_probabilities(outputs)?;
                (outputs.sqrt()? * 2.0)?
            }
        })
    }
}

fn check_probabilities(outputs: &Tensor) -> Result<()> {
    if !outputs.device().is_cpu() || outputs.elem_count() == 0 {
        return Ok(());
    }
    let flat = outputs.flatten_all()?;
    let smallest = flat
        .min(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let largest = flat
        .max(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    if !(smallest > 0.0 && largest <= 1.0) {
        return Err(Error::InvalidArgument {
            name: "output_fn",
            reason: format!(
                "the KL form takes probabilities in (0, 1], got values from {smallest} to {largest}"
            ),
            fix: "return softmax(logits) from output_fn, or use Divergence::SquaredError".into(),
        });
    }
    Ok(())
}

fn check_outputs(outputs: &Tensor) -> Result<()> {
    if outputs.rank() != 2 {
        return Err(Error::ShapeMismatch {
            name: "output_fn",
            expected: "model outputs of shape (batch, outputs)".into(),
            got: outputs.dims().to_vec(),
        });
    }
    Ok(())
}

/// The model's outputs at the target's (differentiable) point, and the probe to differentiate against.
fn outputs_at_point<G>(target: &Target, output_fn: &G) -> Result<(Tensor, Tensor)>
where
    G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    target.refuse_in_place()?;
    target.require_examples("target shift (gradients summed per example)")?;
    let (point, probe) = target.probe_point()?;
    let outputs = output_fn(&point)?;
    check_outputs(&outputs)?;
    Ok((outputs, probe))
}

/// `||grad_point s||^2` for a scalar `s`, keeping the graph when second order is on.
fn squared_gradient(s: &Tensor, probe: &Tensor) -> Result<Tensor> {
    let grads = crate::fused::backward_for(s, &[probe])?;
    let g = grads.get(probe).ok_or_else(|| Error::NoGradient {
        target: "point (through output_fn)".into(),
    })?;
    Ok(g.sqr()?.sum_all()?)
}

fn sum_tensors(terms: impl Iterator<Item = Result<Tensor>>) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for term in terms {
        let term = term?;
        total = Some(match total {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    total.ok_or_else(|| Error::InvalidArgument {
        name: "output_fn",
        reason: "the model has no outputs".into(),
        fix: "return outputs of shape (batch, k) with k >= 1".into(),
    })
}

/// Exact sum from outputs: one backward per output.
fn exact_from(phi: &Tensor, probe: &Tensor) -> Result<Tensor> {
    let batch = phi.dim(0)? as f64;
    let total = sum_tensors(
        (0..phi.dim(1)?).map(|i| squared_gradient(&phi.narrow(1, i, 1)?.sum_all()?, probe)),
    )?;
    Ok((total / batch)?)
}

/// Mean of `n` random projections from outputs: one backward each.
fn projected_from(phi: &Tensor, probe: &Tensor, n: usize, rng: &mut Rng) -> Result<Tensor> {
    let batch = phi.dim(0)? as f64;
    let total = sum_tensors((0..n).map(|_| {
        let eta = rng.rademacher(phi.shape(), phi.dtype(), phi.device())?;
        squared_gradient(&(phi * eta)?.sum_all()?, probe)
    }))?;
    Ok((total / (batch * n as f64))?)
}

/// Exact `mean_b sum_i lambda_i ||grad_x f_bi||^2`, one backward per output.
pub fn sum_of_squared_gradients<G>(
    target: &Target,
    output_fn: &G,
    divergence: Divergence,
) -> Result<Tensor>
where
    G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    let (outputs, probe) = outputs_at_point(target, output_fn)?;
    exact_from(&divergence.transform(&outputs)?, &probe)
}

/// One sample of the random-projection estimator (eq. (9)): `mean_b ||grad_x (eta_b . phi(f_b))||^2`
/// with Rademacher `eta`; one backward. Its expectation is [`sum_of_squared_gradients`].
pub fn projected_sum_of_squared_gradients<G>(
    target: &Target,
    output_fn: &G,
    divergence: Divergence,
    rng: &mut Rng,
) -> Result<Tensor>
where
    G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    let (outputs, probe) = outputs_at_point(target, output_fn)?;
    projected_from(&divergence.transform(&outputs)?, &probe, 1, rng)
}

/// Target shift's hyper-parameters. Defaults (this crate's; the seeds give none): sigma = 0.1, the
/// squared error, the exact sum over outputs (`projections: None`; `Some(n)`: n random projections,
/// eq. (9)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetShiftConfig {
    /// The noise scale sigma (>= 0).
    pub sigma: f64,
    /// The output divergence, which sets the weights lambda_i.
    pub divergence: Divergence,
    /// Random projections per step (`None`: the exact sum, one backward pass per output).
    pub projections: Option<usize>,
}

impl Default for TargetShiftConfig {
    fn default() -> Self {
        Self {
            sigma: 0.1,
            divergence: Divergence::SquaredError,
            projections: None,
        }
    }
}

impl TargetShiftConfig {
    /// Checks every value; the one place target shift's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("sigma", self.sigma)?;
        if let Some(n) = self.projections {
            check_count("projections", n)?;
        }
        Ok(())
    }
}

/// The target-shift regulariser `sigma^2/2 * sum_i lambda_i ||grad f_i||^2`.
#[derive(Clone, Copy, Debug)]
pub struct TargetShift {
    config: TargetShiftConfig,
}

impl TargetShift {
    /// Target shift with validated settings.
    pub fn from_config(config: TargetShiftConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &TargetShiftConfig {
        &self.config
    }

    /// Noise scale `sigma` and the divergence, the exact sum over outputs.
    pub fn new(sigma: f64, divergence: Divergence) -> Result<Self> {
        Self::from_config(TargetShiftConfig {
            sigma,
            divergence,
            ..TargetShiftConfig::default()
        })
    }

    /// Estimate the sum over outputs by `n` random projections (eq. (9)).
    pub fn with_projections(self, n: usize) -> Result<Self> {
        Self::from_config(TargetShiftConfig {
            projections: Some(n),
            ..self.config
        })
    }

    /// The regulariser from outputs computed at the probe point; returns it and its backward count.
    fn regulariser_from(
        &self,
        outputs: &Tensor,
        probe: &Tensor,
        rng: &mut Rng,
    ) -> Result<(Tensor, usize)> {
        second_order::require("the target-shift regulariser")?;
        let phi = self.config.divergence.transform(outputs)?;
        let (sum, backwards) = match self.config.projections {
            None => (exact_from(&phi, probe)?, phi.dim(1)?),
            Some(n) => (projected_from(&phi, probe, n, rng)?, n),
        };
        Ok((
            (sum * (self.config.sigma * self.config.sigma / 2.0))?,
            backwards,
        ))
    }

    /// The regulariser's value, with its graph (needs second order on, to be trained through).
    pub fn regulariser<G>(&self, target: &Target, output_fn: &G, rng: &mut Rng) -> Result<Tensor>
    where
        G: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    {
        let (outputs, probe) = outputs_at_point(target, output_fn)?;
        Ok(self.regulariser_from(&outputs, &probe, rng)?.0)
    }
}

impl Method for TargetShift {
    /// One training step on `task(f(x)) + regulariser`; the model's outputs come from one forward
    /// pass that serves both.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let (output_fn, task) = batch.outputs_and_task("target shift")?;
        let (outputs, probe) = outputs_at_point(batch.target(), output_fn)?;
        let (regulariser, backwards) = self.regulariser_from(&outputs, &probe, rng)?;
        let clean = task(&outputs)?;
        let passes = Passes {
            forward: 1,
            backward: backwards + 1,
            double_backward: 1,
        };
        let mut step = Step::from_objective(&(&clean + &regulariser)?, &clean, passes)?;
        step.grads.remove(&probe);
        Ok(step)
    }
}

impl Regulariser for TargetShift {
    /// The output-smoothness term alone.
    fn penalty(&self, batch: &Batch, rng: &mut Rng) -> Result<Penalty> {
        let (output_fn, _) = batch.outputs_and_task("target shift")?;
        let (outputs, probe) = outputs_at_point(batch.target(), output_fn)?;
        let (value, backwards) = self.regulariser_from(&outputs, &probe, rng)?;
        Ok(Penalty {
            value,
            passes: Passes {
                forward: 1,
                backward: backwards + 1,
                double_backward: 1,
            },
        })
    }
}

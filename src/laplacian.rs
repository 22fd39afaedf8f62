//! The Laplacian regulariser: random noise, integrated out, and estimated by Hutchinson probes.
//!
//! For noise `e` with independent entries of mean 0 and variance sigma^2, a second-order Taylor
//! expansion gives (eq. (5)-(6) of the seed article on generalisation)
//!
//! `E[L(x + e)] = L(x) + sigma^2/2 * tr(H_x L) + O(sigma^4)`,
//!
//! so training on noisy inputs is, to this order, training with the regulariser `sigma^2/2 * tr(H)`.
//! The trace is estimated without forming H by Hutchinson's estimator `tr(H) = E_v[v^T H v]` for probes
//! with `E[v v^T] = I` (Rademacher or Gaussian), where `v^T H v` is either
//!
//! * exact, by a Hessian-vector product (double backward; needs second order on), or
//! * `(L(x + h v) + L(x - h v) - 2 L(x)) / h^2`, a finite difference with error O(h^2) that needs no
//!   second order at all and is trained through by one ordinary backward pass, or
//! * exact, by Taylor mode ([`crate::jet`]): one forward pass of the model written with [`Jet`]
//!   operations carries `(L, g^T v, v^T H v)`; no second order either, one backward pass to train.
//!
//! Book chapter: "Noise".

use crate::error::{check_count, check_non_negative, check_positive};
use crate::estimate::{Estimate, scalar};
use crate::jet::Jet;
use crate::method::{Batch, Method};
use crate::regulariser::{Penalty, Regulariser};
use crate::step::{Passes, Step};
use crate::target::{PointGradient, Target};
use crate::{Error, Result, Rng, second_order};
use candle_core::Tensor;

/// The distribution of Hutchinson probes (both have `E[v v^T] = I`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Entries -1 or +1: the smallest variance of all such probes.
    Rademacher,
    /// Standard normal entries.
    Gaussian,
}

impl ProbeKind {
    /// A probe shaped like the target's point, zero at padded positions.
    pub fn sample(&self, target: &Target, rng: &mut Rng) -> Result<Tensor> {
        let p = target.point();
        let v = match self {
            ProbeKind::Rademacher => rng.rademacher(p.shape(), p.dtype(), p.device())?,
            ProbeKind::Gaussian => rng.normal(p.shape(), p.dtype(), p.device())?,
        };
        target.apply_mask(&v)
    }
}

/// How a curvature `v^T H v` is computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CurvatureMethod {
    /// Exact Hessian-vector product by double backward (second order).
    DoubleBackward,
    /// Central second difference of losses with step `h` (first order only).
    FiniteDifference {
        /// The step multiplies the probe, whose norm is about sqrt(entries): keep `h * ||v||` small
        /// (below ~0.1) for the O(h^2) regime, and `h` above ~1e-4 in f64 (~1e-1 in f32), where
        /// rounding of the loss difference, ~1e-16 L / h^2, takes over.
        h: f64,
    },
    /// Exact, by Taylor mode: the second derivative of `L(x + t v)` at `t = 0` from one forward pass
    /// of the model's jet form ([`crate::Batch::with_jet`], [`jet_curvature`]). Needs no second
    /// order; trained through by one ordinary backward pass.
    Taylor,
}

impl CurvatureMethod {
    fn check(&self) -> Result<()> {
        match self {
            CurvatureMethod::DoubleBackward => {
                second_order::require("an exact Hessian-vector product")
            }
            CurvatureMethod::FiniteDifference { h } => check_positive("h", *h),
            CurvatureMethod::Taylor => Ok(()),
        }
    }

    /// The error for a function given the loss alone where Taylor mode needs its jet form.
    fn needs_jet(what: &'static str) -> Error {
        Error::InvalidArgument {
            name: "method",
            reason: format!(
                "CurvatureMethod::Taylor computes {what} from the model's jet form, and this function has the loss alone"
            ),
            fix:
                "call laplacian::jet_curvature (or the Laplacian regulariser on a Batch::with_jet)"
                    .into(),
        }
    }
}

/// One Taylor-mode pass: `jet_fn` from the jet `(point, v, 0)`; the jet of the scalar loss
/// `(L(x), g^T v, v^T H v)`.
fn taylor_pass<F>(target: &Target, jet_fn: &F, v: &Tensor) -> Result<Jet>
where
    F: Fn(&Jet) -> candle_core::Result<Jet> + ?Sized,
{
    if target.is_in_place() {
        return Err(Error::InvalidArgument {
            name: "target",
            reason: "an in-place target runs the user's unchanged model, which cannot carry a jet".into(),
            fix: "use Target::embedding_matrix or Target::embedding_rows with a jet form of the model, or CurvatureMethod::DoubleBackward".into(),
        });
    }
    let out = jet_fn(&Jet::new(target.point(), v)?)?;
    if out.primal().elem_count() != 1 {
        return Err(Error::ShapeMismatch {
            name: "jet_fn",
            expected: "the jet of a scalar loss (end with Jet::cross_entropy or a mean)".into(),
            got: out.primal().dims().to_vec(),
        });
    }
    Ok(out)
}

/// What [`check_jet`] compared: the relative difference between the jet form and the loss in each
/// part of `(L, g^T v, v^T H v)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JetCheck {
    /// In the value `L`.
    pub value: f64,
    /// In the slope `g^T v` (one backward pass of the loss).
    pub slope: f64,
    /// In the curvature `v^T H v` (double backward of the loss), `None` when second order is off.
    pub curvature: Option<f64>,
}

/// Set-up check for Taylor mode: the jet form `jet_fn` computes the same function as `loss_fn`.
/// Along one probe of `rng`, its value, slope and curvature are compared with the loss, its
/// gradient and (when second order is on) its double-backward curvature. A jet form that differs
/// (another layer order, a weight left out, a wrong rule) is off by far more than rounding; the
/// check allows 1e-8 relative in f64 and 1e-3 in f32 and fails naming the part. Run it once on a
/// real batch before training with [`CurvatureMethod::Taylor`].
pub fn check_jet<F, J>(target: &Target, loss_fn: &F, jet_fn: &J, rng: &mut Rng) -> Result<JetCheck>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
    J: Fn(&Jet) -> candle_core::Result<Jet> + ?Sized,
{
    let v = ProbeKind::Rademacher.sample(target, rng)?;
    let out = taylor_pass(target, jet_fn, &v)?;
    let point_gradient = target.point_gradient(loss_fn)?;
    let slope = (&point_gradient.gradient * &v)?.sum_all()?;
    let curvature = match second_order::is_enabled() {
        true => Some(scalar(&(&v * hvp_from(&point_gradient, &v)?)?.sum_all()?)?),
        false => None,
    };
    let tolerance = match target.point().dtype() {
        candle_core::DType::F64 => 1e-8,
        _ => 1e-3,
    };
    let compare = |part: &'static str, jet: f64, reference: f64| -> Result<f64> {
        let difference = (jet - reference).abs() / jet.abs().max(reference.abs()).max(1e-12);
        if difference.is_nan() || difference > tolerance {
            return Err(Error::InvalidArgument {
                name: "jet_fn",
                reason: format!(
                    "its {part} is {jet}, and the loss gives {reference} (relative difference {difference:e}, allowed {tolerance:e})"
                ),
                fix: "write the jet form with the loss's layers, weights and order (Jet's operations mirror the fused ops)".into(),
            });
        }
        Ok(difference)
    };
    Ok(JetCheck {
        value: compare(
            "value",
            scalar(out.primal())?,
            scalar(&point_gradient.loss)?,
        )?,
        slope: compare("slope g^T v", scalar(out.first())?, scalar(&slope)?)?,
        curvature: match curvature {
            Some(reference) => Some(compare(
                "curvature v^T H v",
                scalar(&out.second_or_zeros()?)?,
                reference,
            )?),
            None => None,
        },
    })
}

/// The curvature `v^T H v` along `v` by Taylor mode: one forward pass of `jet_fn`, the model written
/// with [`Jet`] operations, from the jet `(point, v, 0)`. A scalar tensor with its graph (first
/// order: one backward pass trains through it).
pub fn jet_curvature<F>(target: &Target, jet_fn: &F, v: &Tensor) -> Result<Tensor>
where
    F: Fn(&Jet) -> candle_core::Result<Jet> + ?Sized,
{
    target.check_delta(v)?;
    let out = taylor_pass(target, jet_fn, &target.apply_mask(v)?)?;
    Ok(out.second_or_zeros()?.reshape(())?)
}

/// `H v` from a gradient that kept its graph (see [`Target::point_gradient`]), by a backward pass
/// that needs the point's gradient only.
fn hvp_from(point_gradient: &PointGradient, v: &Tensor) -> Result<Tensor> {
    let along = (&point_gradient.gradient * v)?.sum_all()?;
    if !along.track_op() {
        // The gradient does not depend on the point at all: the Hessian is zero.
        return Ok(v.zeros_like()?);
    }
    let grads = crate::fused::backward_for(&along, &[&point_gradient.probe])?;
    match grads.get(&point_gradient.probe) {
        Some(hv) => Ok(hv.clone()),
        None => Ok(v.zeros_like()?),
    }
}

/// The Hessian-vector product `H v` of the loss with respect to the target's point, by double
/// backward. It keeps its graph, so it can itself be differentiated (third order).
pub fn hessian_vector_product<F>(target: &Target, loss_fn: &F, v: &Tensor) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    second_order::require("a Hessian-vector product")?;
    target.check_delta(v)?;
    let point_gradient = target.point_gradient(loss_fn)?;
    hvp_from(&point_gradient, &target.apply_mask(v)?)
}

/// The curvature `v^T H v` along `v` by `method`, as a scalar tensor with its graph.
pub fn curvature<F>(
    target: &Target,
    loss_fn: &F,
    v: &Tensor,
    method: CurvatureMethod,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    method.check()?;
    target.check_delta(v)?;
    let v = target.apply_mask(v)?;
    match method {
        CurvatureMethod::DoubleBackward => {
            let hv = hessian_vector_product(target, loss_fn, &v)?;
            Ok((v * hv)?.sum_all()?)
        }
        CurvatureMethod::FiniteDifference { h } => {
            let clean = target.loss(loss_fn)?;
            second_difference(target, loss_fn, &clean, &v, h)
        }
        CurvatureMethod::Taylor => Err(CurvatureMethod::needs_jet("the curvature")),
    }
}

/// `(L(x + h v) + L(x - h v) - 2 L(x)) / h^2`.
fn second_difference<F>(
    target: &Target,
    loss_fn: &F,
    clean: &Tensor,
    v: &Tensor,
    h: f64,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    let plus = target.loss_at(loss_fn, &(v * h)?)?;
    let minus = target.loss_at(loss_fn, &(v * -h)?)?;
    Ok(((plus + minus)? - (clean * 2.0)?)?.affine(1.0 / (h * h), 0.0)?)
}

/// The full Hessian `(D, D)` of the loss with respect to the target's point (flattened, `D` entries),
/// one double backward per column. For verification on small points (D <= 4096).
pub fn hessian_matrix<F>(target: &Target, loss_fn: &F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    second_order::require("the exact Hessian")?;
    let p = target.point();
    let n = p.elem_count();
    if n > 4096 {
        return Err(Error::InvalidArgument {
            name: "target",
            reason: format!(
                "the exact Hessian needs one backward pass per entry, and the point has {n}"
            ),
            fix: "use hutchinson() for points with more than 4096 entries".into(),
        });
    }
    let point_gradient = target.point_gradient(loss_fn)?;
    let columns = (0..n)
        .map(|i| {
            let mut basis = vec![0.0f64; n];
            basis[i] = 1.0;
            let e = Tensor::from_vec(basis, p.shape(), p.device())?.to_dtype(p.dtype())?;
            Ok(hvp_from(&point_gradient, &e)?.flatten_all()?.detach())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&columns, 1)?)
}

/// The exact trace of the Hessian over the unmasked entries of the target's point (the Laplacian),
/// from [`hessian_matrix`].
pub fn hessian_trace<F>(target: &Target, loss_fn: &F) -> Result<f64>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    let p = target.point();
    let diagonal: Vec<f64> = hessian_matrix(target, loss_fn)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec2::<f64>()?
        .iter()
        .enumerate()
        .map(|(i, row)| row[i])
        .collect();
    let mask: Vec<f64> = match target.mask() {
        Some(m) => m
            .broadcast_as(p.shape())?
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?,
        None => vec![1.0; diagonal.len()],
    };
    Ok(diagonal.iter().zip(&mask).map(|(h, m)| h * m).sum())
}

/// Hutchinson's estimate of `tr(H_x L)` from `probes` probes of `kind`, each by `method`.
pub fn hutchinson<F>(
    target: &Target,
    loss_fn: &F,
    kind: ProbeKind,
    method: CurvatureMethod,
    probes: usize,
    rng: &mut Rng,
) -> Result<Estimate>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor> + ?Sized,
{
    method.check()?;
    // Taylor mode is refused below with its own fix; the others need two probes for an error bar.
    if method != CurvatureMethod::Taylor {
        crate::estimate::check_probes(probes)?;
    }
    let mut samples = Vec::with_capacity(probes);
    match method {
        CurvatureMethod::DoubleBackward => {
            let point_gradient = target.point_gradient(loss_fn)?;
            for _ in 0..probes {
                let v = kind.sample(target, rng)?;
                let hv = hvp_from(&point_gradient, &v)?;
                samples.push(scalar(&(v * hv)?.sum_all()?)?);
            }
        }
        CurvatureMethod::FiniteDifference { h } => {
            let clean = target.loss(loss_fn)?;
            for _ in 0..probes {
                let v = kind.sample(target, rng)?;
                samples.push(scalar(&second_difference(target, loss_fn, &clean, &v, h)?)?);
            }
        }
        CurvatureMethod::Taylor => return Err(CurvatureMethod::needs_jet("each probe")),
    }
    Estimate::from_samples(samples)
}

/// The Laplacian regulariser's hyper-parameters. Defaults (this crate's; the seeds give none): sigma
/// = 0.1, one Rademacher probe per step (Hutchinson's estimator; Rademacher probes have the smallest
/// variance), the exact curvature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LaplacianConfig {
    /// The noise scale sigma (>= 0): the regulariser is `sigma^2/2 tr(H)`.
    pub sigma: f64,
    /// Probes per step (>= 1).
    pub probes: usize,
    /// The probe distribution.
    pub kind: ProbeKind,
    /// How each curvature `v^T H v` is computed.
    pub method: CurvatureMethod,
}

impl Default for LaplacianConfig {
    fn default() -> Self {
        Self {
            sigma: 0.1,
            probes: 1,
            kind: ProbeKind::Rademacher,
            method: CurvatureMethod::DoubleBackward,
        }
    }
}

impl LaplacianConfig {
    /// Checks every value; the one place the regulariser's settings are validated.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("sigma", self.sigma)?;
        check_count("probes", self.probes)?;
        if let CurvatureMethod::FiniteDifference { h } = self.method {
            check_positive("h", h)?;
        }
        Ok(())
    }
}

/// The trainable Laplacian regulariser `sigma^2/2 * tr(H_x L)`, estimated by Hutchinson probes.
#[derive(Clone, Copy, Debug)]
pub struct Laplacian {
    config: LaplacianConfig,
}

impl Laplacian {
    /// The regulariser with validated settings.
    pub fn from_config(config: LaplacianConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &LaplacianConfig {
        &self.config
    }

    /// Noise scale `sigma`, the other settings at their defaults ([`LaplacianConfig`]).
    pub fn new(sigma: f64) -> Result<Self> {
        Self::from_config(LaplacianConfig {
            sigma,
            ..LaplacianConfig::default()
        })
    }

    /// Number of probes per step.
    pub fn with_probes(self, probes: usize) -> Result<Self> {
        Self::from_config(LaplacianConfig {
            probes,
            ..self.config
        })
    }

    /// Probe distribution.
    pub fn with_probe_kind(mut self, kind: ProbeKind) -> Self {
        self.config.kind = kind;
        self
    }

    /// How each curvature is computed.
    pub fn with_method(self, method: CurvatureMethod) -> Result<Self> {
        Self::from_config(LaplacianConfig {
            method,
            ..self.config
        })
    }

    /// `sigma^2/2 * mean_probes v^T H v` with its graph, and the loss pass it was built from: the point
    /// gradient's pass (exact) or the clean loss (finite differences).
    fn regulariser(&self, batch: &Batch, rng: &mut Rng) -> Result<(Tensor, Clean)> {
        self.config.method.check()?;
        let (target, loss_fn) = (batch.target(), |p: &Tensor| batch.loss_at(p));
        let weight = self.config.sigma * self.config.sigma / 2.0 / self.config.probes as f64;
        let mut curvatures = Vec::with_capacity(self.config.probes);
        let clean = match self.config.method {
            CurvatureMethod::DoubleBackward => {
                let point_gradient = target.point_gradient(&loss_fn)?;
                batch.check_gradient(&point_gradient.gradient)?;
                for _ in 0..self.config.probes {
                    let v = self.config.kind.sample(target, rng)?;
                    curvatures.push((&v * hvp_from(&point_gradient, &v)?)?.sum_all()?);
                }
                Clean::PointGradient(point_gradient)
            }
            CurvatureMethod::FiniteDifference { h } => {
                let clean = target.loss(&loss_fn)?;
                for _ in 0..self.config.probes {
                    let v = self.config.kind.sample(target, rng)?;
                    curvatures.push(second_difference(target, &loss_fn, &clean, &v, h)?);
                }
                Clean::Loss(clean)
            }
            CurvatureMethod::Taylor => {
                let jet_fn = batch.jet("CurvatureMethod::Taylor")?;
                let mut clean = None;
                for _ in 0..self.config.probes {
                    let v = self.config.kind.sample(target, rng)?;
                    let out = taylor_pass(target, jet_fn, &v)?;
                    if clean.is_none() {
                        // g^T v: zero only when the loss does not reach the point (or g is zero).
                        batch.check_gradient(out.first())?;
                    }
                    curvatures.push(out.second_or_zeros()?.reshape(())?);
                    clean.get_or_insert(out.primal().reshape(())?);
                }
                Clean::Loss(clean.expect("probes >= 1"))
            }
        };
        let mut curvatures = curvatures.into_iter();
        let first = curvatures.next().expect("probes >= 1");
        let total = curvatures.try_fold(first, |acc, q| acc + q)?;
        Ok(((total * weight)?, clean))
    }

    fn passes(&self) -> Passes {
        match self.config.method {
            CurvatureMethod::DoubleBackward => Passes {
                forward: 1,
                backward: 2 + self.config.probes,
                double_backward: 1 + self.config.probes,
            },
            CurvatureMethod::FiniteDifference { .. } => Passes {
                forward: 1 + 2 * self.config.probes,
                backward: 1 + 2 * self.config.probes,
                double_backward: 0,
            },
            // Each forward pass carries three streams (value, first and second derivative).
            CurvatureMethod::Taylor => Passes {
                forward: self.config.probes,
                backward: 1,
                double_backward: 0,
            },
        }
    }
}

/// The clean pass a Laplacian regulariser was built from.
enum Clean {
    PointGradient(PointGradient),
    Loss(Tensor),
}

impl Method for Laplacian {
    /// One training step on `L + sigma^2/2 * mean_probes v^T H v`. With the exact curvature, the
    /// gradient and each `H v` come from passes that need the point's gradient only, and one last
    /// pass takes every weight's gradient of the whole objective.
    fn step(&mut self, batch: &Batch, rng: &mut Rng) -> Result<Step> {
        let (regulariser, clean) = self.regulariser(batch, rng)?;
        match clean {
            Clean::PointGradient(point_gradient) => {
                // Every weight's gradient of L + regulariser in one pass.
                let objective = (&point_gradient.loss + regulariser)?;
                Step::from_point_objective(
                    batch.target(),
                    &objective,
                    &point_gradient,
                    self.passes(),
                )
            }
            Clean::Loss(clean) => {
                Step::from_objective(&(&clean + regulariser)?, &clean, self.passes())
            }
        }
    }
}

impl Regulariser for Laplacian {
    /// The curvature term alone.
    fn penalty(&self, batch: &Batch, rng: &mut Rng) -> Result<Penalty> {
        Ok(Penalty {
            value: self.regulariser(batch, rng)?.0,
            passes: self.passes(),
        })
    }
}

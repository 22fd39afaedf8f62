//! The verification toolkit: finite-difference gradient checks, relative errors, and the fitted order
//! of convergence of an error against a step size.
//!
//! Every equivalence in this crate is an asymptotic statement, "A - B = O(eps^p)". One tolerance at one
//! eps proves little; fitting the slope p of log|A - B| against log eps over two or more decades does.
//! Tests, the `advtrain` binary, the notebooks and the book all use these functions. Book: "Introduction",
//! section "How a result is checked".

pub use crate::estimate::{Estimate, scalar};
use crate::target::Target;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};

/// `||a - b|| / max(||a||, ||b||)` in f64 (0 when both are zero).
pub fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            name: "b",
            expected: format!("{:?} (the shape of a)", a.dims()),
            got: b.dims().to_vec(),
        });
    }
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let diff = l2_norm(&(&a - &b)?)?;
    let scale = l2_norm(&a)?.max(l2_norm(&b)?);
    Ok(if scale == 0.0 { 0.0 } else { diff / scale })
}

/// Euclidean norm of all entries, in f64.
pub fn l2_norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt())
}

/// Central finite-difference gradient of a scalar function, one coordinate at a time (error O(h^2)).
pub fn finite_difference_gradient<F>(f: F, x: &Tensor, h: f64) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    crate::error::check_positive("h", h)?;
    let base: Vec<f64> = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let mut grad = Vec::with_capacity(base.len());
    let at = |values: Vec<f64>| -> Result<f64> {
        let t = Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?;
        scalar(&f(&t)?)
    };
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += h;
        let mut minus = base.clone();
        minus[i] -= h;
        grad.push((at(plus)? - at(minus)?) / (2.0 * h));
    }
    Ok(Tensor::from_vec(grad, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

/// The gradient of a scalar function by autodiff.
pub fn autodiff_gradient<F>(f: F, x: &Tensor) -> Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let var = Var::from_tensor(x)?;
    let grads = f(var.as_tensor())?.backward()?;
    grads
        .get(var.as_tensor())
        .cloned()
        .ok_or(Error::NoGradient {
            target: "input of the checked function".into(),
        })
}

/// The outcome of comparing an autodiff derivative with a finite-difference one.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// `||autodiff - fd|| / max(||autodiff||, ||fd||)`.
    pub relative_error: f64,
    /// Norm of the autodiff derivative (to tell a trivially zero check apart).
    pub norm: f64,
}

/// First-order check: autodiff gradient against central differences with step `h`.
pub fn gradcheck<F>(f: F, x: &Tensor, h: f64) -> Result<GradCheck>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let exact = autodiff_gradient(&f, x)?;
    let fd = finite_difference_gradient(&f, x, h)?;
    Ok(GradCheck {
        relative_error: relative_error(&exact, &fd)?,
        norm: l2_norm(&exact)?,
    })
}

/// Second-order check: the Hessian-vector product `H v` by double backward against the central
/// difference of gradients `(grad f(x + h v) - grad f(x - h v)) / 2h`. Needs second order on.
pub fn gradcheck_second_order<F>(f: F, x: &Tensor, v: &Tensor, h: f64) -> Result<GradCheck>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    crate::error::check_positive("h", h)?;
    let target = Target::input(x)?;
    let exact = crate::laplacian::hessian_vector_product(&target, &f, v)?;
    let plus = autodiff_gradient(&f, &(x + (v * h)?)?)?;
    let minus = autodiff_gradient(&f, &(x - (v * h)?)?)?;
    let fd = ((plus - minus)? / (2.0 * h))?;
    Ok(GradCheck {
        relative_error: relative_error(&exact, &fd)?,
        norm: l2_norm(&exact)?,
    })
}

/// A least-squares line through `(log step, log error)`.
#[derive(Clone, Copy, Debug)]
pub struct OrderFit {
    /// The fitted order p in error ~ C step^p.
    pub slope: f64,
    /// log C.
    pub intercept: f64,
    /// Coefficient of determination of the fit (1 = a perfect power law).
    pub r_squared: f64,
}

/// Fits the convergence order of `errors` against `steps` (both positive, same length, at least 3).
pub fn fit_order(steps: &[f64], errors: &[f64]) -> Result<OrderFit> {
    if steps.len() != errors.len() || steps.len() < 3 {
        return Err(Error::InvalidArgument {
            name: "errors",
            reason: format!(
                "need at least 3 (step, error) pairs of equal length, got {} steps and {} errors",
                steps.len(),
                errors.len()
            ),
            fix: "measure the error at three or more step sizes".into(),
        });
    }
    if let Some(bad) = steps
        .iter()
        .chain(errors)
        .find(|v| !(v.is_finite() && **v > 0.0))
    {
        return Err(Error::InvalidArgument {
            name: "errors",
            reason: format!(
                "every step and error must be finite and > 0 for a log-log fit, got {bad}"
            ),
            fix: "drop step sizes where the error is exactly zero or not finite".into(),
        });
    }
    let xs: Vec<f64> = steps.iter().map(|s| s.ln()).collect();
    let ys: Vec<f64> = errors.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let syy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let r_squared = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Ok(OrderFit {
        slope,
        intercept,
        r_squared,
    })
}

/// `n` step sizes spaced evenly in log between `lo` and `hi` (inclusive).
pub fn log_spaced(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    let (a, b) = (lo.ln(), hi.ln());
    (0..n)
        .map(|i| (a + (b - a) * i as f64 / (n - 1) as f64).exp())
        .collect()
}

/// Gauss-Hermite nodes and weights for `integral exp(-t^2) f(t) dt ~ sum_i w_i f(t_i)`, exact for
/// polynomials of degree <= 2n - 1. Newton's method on the normalised Hermite recurrence.
/// For `e ~ N(0, sigma^2)`: `E[f(e)] ~ pi^(-1/2) sum_i w_i f(sqrt(2) sigma t_i)`.
pub fn gauss_hermite(n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    crate::error::check_count("n", n)?;
    let pi_to_minus_quarter = std::f64::consts::PI.powf(-0.25);
    let nf = n as f64;
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    let mut z = 0.0f64;
    for i in 0..n.div_ceil(2) {
        z = match i {
            0 => (2.0 * nf + 1.0).sqrt() - 1.85575 * (2.0 * nf + 1.0).powf(-0.16667),
            1 => z - 1.14 * nf.powf(0.426) / z,
            2 => 1.86 * z - 0.86 * nodes[0],
            3 => 1.91 * z - 0.91 * nodes[1],
            _ => 2.0 * z - nodes[i - 2],
        };
        let mut derivative = 0.0;
        for _ in 0..100 {
            let (mut p1, mut p2) = (pi_to_minus_quarter, 0.0f64);
            for j in 1..=n {
                let jf = j as f64;
                let p3 = p2;
                p2 = p1;
                p1 = z * (2.0 / jf).sqrt() * p2 - ((jf - 1.0) / jf).sqrt() * p3;
            }
            derivative = (2.0 * nf).sqrt() * p2;
            let previous = z;
            z = previous - p1 / derivative;
            if (z - previous).abs() <= 1e-14 {
                break;
            }
        }
        nodes[i] = z;
        nodes[n - 1 - i] = -z;
        weights[i] = 2.0 / (derivative * derivative);
        weights[n - 1 - i] = weights[i];
    }
    Ok((nodes, weights))
}

/// The gradients of `vars` in `grads`, flattened and concatenated in order (missing ones as zeros):
/// one vector to compare two methods' weight gradients.
pub fn flat_gradient(
    vars: &[candle_core::Var],
    grads: &candle_core::backprop::GradStore,
) -> Result<Tensor> {
    let parts = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.detach().flatten_all()?),
            None => Ok(v.as_tensor().zeros_like()?.flatten_all()?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// Checks the weight gradients in `grads` against central differences of `objective` (a scalar of the
/// current weights) over up to `per_var` entries spread over each of `vars`, each moved by `h` and put
/// back. Weights are changed in place with `Var::set`, so `objective` must read the same variables.
/// The returned norm is that of the autodiff entries compared.
pub fn weight_gradcheck<F>(
    vars: &[Var],
    grads: &candle_core::backprop::GradStore,
    objective: F,
    per_var: usize,
    h: f64,
) -> Result<GradCheck>
where
    F: Fn() -> Result<f64>,
{
    crate::error::check_positive("h", h)?;
    crate::error::check_count("per_var", per_var)?;
    let (mut autodiff, mut fd) = (Vec::new(), Vec::new());
    for var in vars {
        let base: Vec<f64> = var.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let grad: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
            None => vec![0.0; base.len()],
        };
        let set = |i: usize, delta: f64| -> Result<()> {
            let mut values = base.clone();
            values[i] += delta;
            let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
            Ok(var.set(&t)?)
        };
        for i in (0..base.len())
            .step_by((base.len() / per_var).max(1))
            .take(per_var)
        {
            set(i, h)?;
            let plus = objective()?;
            set(i, -h)?;
            let minus = objective()?;
            set(i, 0.0)?;
            fd.push((plus - minus) / (2.0 * h));
            autodiff.push(grad[i]);
        }
    }
    let device = candle_core::Device::Cpu;
    let autodiff = Tensor::new(autodiff.as_slice(), &device)?;
    let fd = Tensor::new(fd.as_slice(), &device)?;
    Ok(GradCheck {
        relative_error: relative_error(&autodiff, &fd)?,
        norm: l2_norm(&autodiff)?,
    })
}

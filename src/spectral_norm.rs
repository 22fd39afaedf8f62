//! The L-constraint: spectral normalisation by power iteration, and a network's Lipschitz bound.
//!
//! A layer `x -> W x + b` is `||W||_2`-Lipschitz, where `||W||_2 = sigma_max(W)`; a chain of layers with
//! 1-Lipschitz activations (ReLU, tanh, ...) is at most `prod_l ||W_l||_2`-Lipschitz. Spectral
//! normalisation divides each weight by an estimate of `sigma_max` from power iteration
//! (`v = normalize(W^T u)`, `u = normalize(W v)`, `sigma = u^T W v` with `u`, `v` held constant), which
//! has the exact derivative `d sigma / dW = u v^T` at convergence. The persistent `u` makes one
//! iteration per training step enough; defaults follow PyTorch (1 iteration, eps = 1e-12, 15 warm-up
//! iterations, `u` updated only in training mode). Conv and embedding weights are reshaped to
//! `(shape[0], rest)`. Gradient penalty is the soft, whole-model version of this constraint. Book
//! chapter: "L-constraint".

use crate::error::{check_count, check_positive};
use crate::{Error, Result, Rng};
use candle_core::{DType, Module, Tensor, Var};
use std::sync::Mutex;

/// Power iterations per training-mode call (PyTorch's default).
pub const DEFAULT_POWER_ITERATIONS: usize = 1;
/// Floor on norms when normalising vectors (PyTorch's default).
pub const DEFAULT_EPS: f64 = 1e-12;
/// Power iterations run once at construction (as PyTorch does at registration).
pub const WARMUP_ITERATIONS: usize = 15;

/// The weight as a matrix `(shape[0], rest)`.
fn as_matrix(weight: &Tensor) -> Result<Tensor> {
    if weight.rank() < 2 || weight.elem_count() == 0 {
        return Err(Error::ShapeMismatch {
            name: "weight",
            expected: "a non-empty weight of rank >= 2 (out, in, ...)".into(),
            got: weight.dims().to_vec(),
        });
    }
    Ok(weight.flatten_from(1)?)
}

fn normalize(v: &Tensor, eps: f64) -> Result<Tensor> {
    let norm = v.sqr()?.sum_all()?.sqrt()?.maximum(eps)?;
    Ok(v.broadcast_div(&norm)?)
}

/// Power-iteration state for one weight.
#[derive(Clone, Debug)]
pub struct SpectralNorm {
    u: Tensor,
    v: Tensor,
    iterations: usize,
    eps: f64,
}

impl SpectralNorm {
    /// State for `weight`, with random `u`, `v` from `rng` and the warm-up iterations run.
    pub fn new(weight: &Tensor, rng: &mut Rng) -> Result<Self> {
        let w = as_matrix(weight)?.detach();
        let (rows, cols) = w.dims2()?;
        let mut state = Self {
            u: normalize(&rng.normal((rows, 1), w.dtype(), w.device())?, DEFAULT_EPS)?,
            v: normalize(&rng.normal((cols, 1), w.dtype(), w.device())?, DEFAULT_EPS)?,
            iterations: DEFAULT_POWER_ITERATIONS,
            eps: DEFAULT_EPS,
        };
        state.iterate(&w, WARMUP_ITERATIONS)?;
        Ok(state)
    }

    /// Power iterations per training-mode call.
    pub fn with_power_iterations(mut self, n: usize) -> Result<Self> {
        check_count("n_power_iterations", n)?;
        self.iterations = n;
        Ok(self)
    }

    /// Floor on norms when normalising.
    pub fn with_eps(mut self, eps: f64) -> Result<Self> {
        check_positive("eps", eps)?;
        self.eps = eps;
        Ok(self)
    }

    fn iterate(&mut self, w: &Tensor, n: usize) -> Result<()> {
        for _ in 0..n {
            self.v = normalize(&w.t()?.matmul(&self.u)?, self.eps)?;
            self.u = normalize(&w.matmul(&self.v)?, self.eps)?;
        }
        Ok(())
    }

    /// The estimate `sigma = u^T W v`, differentiable in `weight` (`d sigma / dW = u v^T`). In training
    /// mode the power iteration advances first.
    pub fn sigma(&mut self, weight: &Tensor, train: bool) -> Result<Tensor> {
        let w = as_matrix(weight)?;
        if w.dims() != [self.u.dim(0)?, self.v.dim(0)?] {
            return Err(Error::ShapeMismatch {
                name: "weight",
                expected: format!("({}, {}) as a matrix", self.u.dim(0)?, self.v.dim(0)?),
                got: weight.dims().to_vec(),
            });
        }
        if train {
            self.iterate(&w.detach(), self.iterations)?;
        }
        Ok(self.u.t()?.matmul(&w.matmul(&self.v)?)?.reshape(())?)
    }

    /// `weight / sigma`.
    pub fn normalise(&mut self, weight: &Tensor, train: bool) -> Result<Tensor> {
        let sigma = self.sigma(weight, train)?;
        // A zero weight (or estimate) would divide by zero; read where it costs no device sync.
        if sigma.device().is_cpu() && sigma.to_dtype(DType::F64)?.to_scalar::<f64>()? == 0.0 {
            return Err(Error::InvalidArgument {
                name: "weight",
                reason: "its spectral norm is 0: a zero weight has no direction to keep".into(),
                fix: "initialise the weight randomly (or leave this layer unnormalised)".into(),
            });
        }
        Ok(weight.broadcast_div(&sigma)?)
    }

    /// The current left and right singular vector estimates `(u, v)`.
    pub fn vectors(&self) -> (&Tensor, &Tensor) {
        (&self.u, &self.v)
    }
}

/// `sigma_max(weight)` by power iteration run until the estimate changes by less than `tol` (relative),
/// at most `max_iterations` times. Deterministic start (all-ones `v`).
pub fn spectral_norm(weight: &Tensor, tol: f64, max_iterations: usize) -> Result<f64> {
    check_positive("tol", tol)?;
    check_count("max_iterations", max_iterations)?;
    let w = as_matrix(weight)?.detach().to_dtype(DType::F64)?;
    let cols = w.dim(1)?;
    let mut v = normalize(
        &Tensor::ones((cols, 1), DType::F64, w.device())?,
        DEFAULT_EPS,
    )?;
    let mut previous = 0.0f64;
    for _ in 0..max_iterations {
        let wv = w.matmul(&v)?;
        let sigma = wv.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        v = normalize(&w.t()?.matmul(&wv)?, DEFAULT_EPS)?;
        if (sigma - previous).abs() <= tol * sigma.max(f64::MIN_POSITIVE) {
            return Ok(sigma);
        }
        previous = sigma;
    }
    Ok(previous)
}

/// Upper bound on the Lipschitz constant (L2) of a chain of layers with these weights and
/// 1-Lipschitz activations: the product of their spectral norms.
pub fn lipschitz_bound(weights: &[&Tensor]) -> Result<f64> {
    if weights.is_empty() {
        return Err(Error::InvalidArgument {
            name: "weights",
            reason: "no layers given".into(),
            fix: "pass the weight of every layer".into(),
        });
    }
    weights
        .iter()
        .try_fold(1.0, |acc, w| Ok(acc * spectral_norm(w, 1e-10, 10_000)?))
}

/// A linear layer `x W^T / sigma(W) + b` with spectral normalisation.
pub struct SpectralNormLinear {
    weight: Var,
    bias: Option<Var>,
    state: Mutex<SpectralNorm>,
    train: bool,
}

impl SpectralNormLinear {
    /// Wraps a weight `(out, in)` and optional bias `(out,)`; `u`, `v` are drawn from `rng`.
    pub fn new(weight: Var, bias: Option<Var>, rng: &mut Rng) -> Result<Self> {
        let state = SpectralNorm::new(weight.as_tensor(), rng)?;
        Ok(Self {
            weight,
            bias,
            state: Mutex::new(state),
            train: true,
        })
    }

    /// Training mode advances the power iteration on every forward; evaluation mode freezes `u`, `v`.
    pub fn set_train(&mut self, train: bool) {
        self.train = train;
    }

    /// The normalised weight `W / sigma(W)` (advancing the iteration in training mode).
    pub fn normalised_weight(&self) -> Result<Tensor> {
        let mut state = self.state.lock().expect("spectral-norm state poisoned");
        state.normalise(self.weight.as_tensor(), self.train)
    }
}

impl Module for SpectralNormLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.normalised_weight()?;
        let y = x.broadcast_matmul(&w.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b.as_tensor()),
            None => Ok(y),
        }
    }
}

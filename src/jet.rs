//! Taylor mode: a second-order jet carried forward through the model, so that `v^T H v` costs one
//! forward pass and no double backward.
//!
//! A [`Jet`] is a path through a point and its first two derivatives along it,
//! `x(t) = x0 + t x1 + t^2/2 x2`, stored as `(primal, first, second)`. Every operation maps the jet of
//! its input to the jet of its output by the chain rule to second order:
//!
//! * linear maps act on each part alone: `(A x0 + b, A x1, A x2)`;
//! * an elementwise `f`: `(f(x0), f'(x0) x1, f''(x0) x1^2 + f'(x0) x2)`;
//! * a bilinear product (elementwise or matrix): `(a0 b0, a1 b0 + a0 b1, a2 b0 + 2 a1 b1 + a0 b2)`.
//!
//! Started at `(x, v, 0)` and pushed through a scalar loss, the jet comes out as
//! `(L(x), g^T v, v^T H v)` (eq. (3.8) of the book): the curvature a Hutchinson probe needs, exact,
//! from one forward pass that carries three streams. Its graph is an ordinary first-order graph, so
//! training through the curvature needs one backward pass and no second order
//! ([`crate::second_order`] may stay off). Reverse-over-reverse takes a forward pass, a backward pass
//! with its graph, a backward pass through that for `H v`, and a backward pass through all of it.
//!
//! The rules here cover the fused op set and what a transformer needs: [`Jet::linear`],
//! [`Jet::gelu_erf`], [`Jet::gelu_tanh`], [`Jet::tanh`], [`Jet::relu`], [`Jet::layer_norm`], [`Jet::softmax_last_dim`], [`Jet::log_softmax_last_dim`],
//! [`Jet::cross_entropy`], [`Jet::mul`], [`Jet::matmul`], and [`Jet::map_linear`] for any linear map
//! (reshapes, transposes, pooling, lookups, convolutions). A part that is known to be zero (the
//! second part of the starting jet) is left out, so a model's first layer costs two products, not
//! three. `tests/suite/jet.rs` checks every rule against double backward (f64, to 1e-12) and
//! against finite differences. Book chapter: "Taylor mode" (eqs. (3.6)-(3.9)).

use crate::fused::{self, Derivative};
use crate::{Error, Result};
use candle_core::{D, Tensor};

type OpResult<T> = candle_core::Result<T>;

/// A second-order jet `(x0, x1, x2)`: a value, its derivative along a path and its second
/// derivative, all of one shape. A missing second part is zero.
#[derive(Clone, Debug)]
pub struct Jet {
    primal: Tensor,
    first: Tensor,
    second: Option<Tensor>,
}

/// `a + b` where either may be known to be zero.
fn add_opt(a: Option<Tensor>, b: Option<Tensor>) -> OpResult<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(a.broadcast_add(&b)?),
        (a, None) => a,
        (None, b) => b,
    })
}

/// Moves the stored `a` onto the shape of `b`'s broadcast, where the two parts of a jet came from
/// operands of different shapes.
fn same_shape(t: Tensor, like: &Tensor) -> OpResult<Tensor> {
    if t.dims() == like.dims() {
        Ok(t)
    } else {
        t.broadcast_as(like.shape())?.contiguous()
    }
}

impl Jet {
    /// The path `x0 + t x1` through `primal` along `direction` (second part zero): the jet a
    /// Hutchinson probe starts from. Shapes and dtypes must match.
    pub fn new(primal: &Tensor, direction: &Tensor) -> Result<Self> {
        Self::check_part("direction", primal, direction)?;
        Ok(Self {
            primal: primal.clone(),
            first: direction.clone(),
            second: None,
        })
    }

    /// A jet with all three parts given.
    pub fn with_second(primal: &Tensor, first: &Tensor, second: &Tensor) -> Result<Self> {
        Self::check_part("first", primal, first)?;
        Self::check_part("second", primal, second)?;
        Ok(Self {
            primal: primal.clone(),
            first: first.clone(),
            second: Some(second.clone()),
        })
    }

    fn check_part(name: &'static str, primal: &Tensor, part: &Tensor) -> Result<()> {
        if part.dims() != primal.dims() {
            return Err(Error::InvalidArgument {
                name,
                reason: format!(
                    "shape {:?} for a primal of shape {:?}",
                    part.dims(),
                    primal.dims()
                ),
                fix: "pass a tangent shaped like the point".into(),
            });
        }
        if part.dtype() != primal.dtype() {
            return Err(Error::InvalidArgument {
                name,
                reason: format!(
                    "dtype {:?} for a primal of {:?}",
                    part.dtype(),
                    primal.dtype()
                ),
                fix: format!("convert it with to_dtype({:?})", primal.dtype()),
            });
        }
        Ok(())
    }

    /// The value `x0`.
    pub fn primal(&self) -> &Tensor {
        &self.primal
    }

    /// The first derivative `x1` along the path.
    pub fn first(&self) -> &Tensor {
        &self.first
    }

    /// The second derivative `x2`, `None` where it is known to be zero.
    pub fn second(&self) -> Option<&Tensor> {
        self.second.as_ref()
    }

    /// The second derivative, zeros where it is known to be zero.
    pub fn second_or_zeros(&self) -> OpResult<Tensor> {
        match &self.second {
            Some(s) => Ok(s.clone()),
            None => self.first.zeros_like(),
        }
    }

    /// `f` applied to each part, for a linear `f` (no bias): reshapes, transposes, sums, pooling with
    /// fixed weights, lookups, convolutions. `f` must be linear; this is not checked.
    pub fn map_linear<F>(&self, f: F) -> OpResult<Self>
    where
        F: Fn(&Tensor) -> OpResult<Tensor>,
    {
        Ok(Self {
            primal: f(&self.primal)?,
            first: f(&self.first)?,
            second: self.second.as_ref().map(&f).transpose()?,
        })
    }

    /// Adds a constant (a bias, an attention mask) to the value; the derivatives are unchanged.
    pub fn broadcast_add_constant(&self, c: &Tensor) -> OpResult<Self> {
        let primal = self.primal.broadcast_add(c)?;
        Ok(Self {
            first: same_shape(self.first.clone(), &primal)?,
            second: self
                .second
                .clone()
                .map(|s| same_shape(s, &primal))
                .transpose()?,
            primal,
        })
    }

    /// `a x + b` for numbers `a` and `b`.
    pub fn affine(&self, mul: f64, add: f64) -> OpResult<Self> {
        Ok(Self {
            primal: self.primal.affine(mul, add)?,
            first: (&self.first * mul)?,
            second: self.second.as_ref().map(|s| s * mul).transpose()?,
        })
    }

    /// The sum of two jets (broadcasting).
    pub fn add(&self, other: &Jet) -> OpResult<Self> {
        Ok(Self {
            primal: self.primal.broadcast_add(&other.primal)?,
            first: self.first.broadcast_add(&other.first)?,
            second: add_opt(self.second.clone(), other.second.clone())?,
        })
    }

    /// `op(a, b)` for a bilinear `op`, by the product rule to second order.
    fn bilinear<F>(&self, other: &Jet, op: F) -> OpResult<Self>
    where
        F: Fn(&Tensor, &Tensor) -> OpResult<Tensor>,
    {
        let (a, b) = (self, other);
        let primal = op(&a.primal, &b.primal)?;
        let first = op(&a.first, &b.primal)?.add(&op(&a.primal, &b.first)?)?;
        let cross = (op(&a.first, &b.first)? * 2.0)?;
        let second = add_opt(
            Some(cross),
            add_opt(
                a.second.as_ref().map(|s| op(s, &b.primal)).transpose()?,
                b.second.as_ref().map(|s| op(&a.primal, s)).transpose()?,
            )?,
        )?;
        Ok(Self {
            primal,
            first,
            second,
        })
    }

    /// The elementwise product of two jets (broadcasting).
    pub fn mul(&self, other: &Jet) -> OpResult<Self> {
        self.bilinear(other, |a, b| a.broadcast_mul(b))
    }

    /// The matrix product of two jets (batched like `Tensor::matmul`).
    pub fn matmul(&self, other: &Jet) -> OpResult<Self> {
        self.bilinear(other, |a, b| a.matmul(b))
    }

    /// Multiplies by a constant tensor (broadcasting).
    pub fn broadcast_mul_constant(&self, c: &Tensor) -> OpResult<Self> {
        self.map_linear(|t| t.broadcast_mul(c))
    }

    /// `x W^T + b` by [`fused::linear`] (the bias enters the value only).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> OpResult<Self> {
        Ok(Self {
            primal: fused::linear(&self.primal, weight, bias)?,
            first: fused::linear(&self.first, weight, None)?,
            second: self
                .second
                .as_ref()
                .map(|s| fused::linear(s, weight, None))
                .transpose()?,
        })
    }

    /// An elementwise function given its value and its derivatives `f'(x0)` (`slope`) and
    /// `f''(x0)` (`bend`): each derivative is evaluated once, and every part is a product with it.
    fn elementwise(&self, value: Tensor, slope: &Tensor, bend: &Tensor) -> OpResult<Self> {
        let curvature = (self.first.sqr()? * bend)?;
        let second = match &self.second {
            Some(s) => (curvature + (s * slope)?)?,
            None => curvature,
        };
        Ok(Self {
            primal: value,
            first: (&self.first * slope)?,
            second: Some(second),
        })
    }

    /// A GELU form: its value and its derivatives by the fused ops that compute `w f'(x)` and
    /// `w f''(x)`, with `w = 1` (their backward passes are fused ops too).
    fn gelu_with<F>(&self, value: Tensor, scaled: F) -> OpResult<Self>
    where
        F: Fn(&Tensor, Derivative) -> OpResult<Tensor>,
    {
        let ones = self.primal.ones_like()?;
        let slope = scaled(&ones, Derivative::First)?;
        let bend = scaled(&ones, Derivative::Second)?;
        self.elementwise(value, &slope, &bend)
    }

    /// The exact GELU, by the fused ops of [`fused::gelu_erf`] and its derivatives.
    pub fn gelu_erf(&self) -> OpResult<Self> {
        let x = &self.primal;
        self.gelu_with(fused::gelu_erf(x)?, |w, d| fused::gelu_erf_scaled(x, w, d))
    }

    /// The tanh GELU, like [`Jet::gelu_erf`].
    pub fn gelu_tanh(&self) -> OpResult<Self> {
        let x = &self.primal;
        self.gelu_with(fused::gelu_tanh(x)?, |w, d| {
            fused::gelu_tanh_scaled(x, w, d)
        })
    }

    /// `tanh`, with `f' = 1 - t^2` and `f'' = -2 t (1 - t^2)`.
    pub fn tanh(&self) -> OpResult<Self> {
        let t = self.primal.tanh()?;
        let slope = (1.0 - t.sqr()?)?;
        let bend = ((&t * &slope)? * -2.0)?;
        self.elementwise(t, &slope, &bend)
    }

    /// ReLU, with `f' = 1` where `x0 > 0` and `f'' = 0` (the kink at 0 is not differentiable: the
    /// expansion holds only while no unit crosses it).
    pub fn relu(&self) -> OpResult<Self> {
        let slope = self.primal.gt(0.0)?.to_dtype(self.primal.dtype())?;
        Ok(Self {
            primal: self.primal.relu()?,
            first: (&self.first * &slope)?,
            second: self.second.as_ref().map(|s| s * &slope).transpose()?,
        })
    }

    /// Layer normalisation over the last dimension, then `weight` and `bias`, like
    /// [`fused::layer_norm`] (whose fused op gives the value).
    ///
    /// With `c = x - mean(x)`, `r = 1 / sqrt(var(x) + eps)`, `n = c r` and the row means
    /// `a = <n c1>`, `b = <n c2>`, `q = <c1^2>`:
    /// `n1 = r (c1 - a n)` and `n2 = r (c2 - b n) - 2 r^2 a c1 + r^2 (3 a^2 - q) n`.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> OpResult<Self> {
        let x = &self.primal;
        let n = fused::layer_norm(x, None, None, eps)?;
        let centred = |t: &Tensor| t.broadcast_sub(&t.mean_keepdim(D::Minus1)?);
        let c0 = centred(x)?;
        let r = (c0.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        let c1 = centred(&self.first)?;
        let a = (&n * &c1)?.mean_keepdim(D::Minus1)?;
        let first = (&c1 - n.broadcast_mul(&a)?)?.broadcast_mul(&r)?;
        let r2 = r.sqr()?;
        let q = c1.sqr()?.mean_keepdim(D::Minus1)?;
        let coefficient = ((a.sqr()? * 3.0)? - q)?.mul(&r2)?;
        let mut second =
            (n.broadcast_mul(&coefficient)? - c1.broadcast_mul(&(a * &r2)?)?.affine(2.0, 0.0)?)?;
        if let Some(x2) = &self.second {
            let c2 = centred(x2)?;
            let b = (&n * &c2)?.mean_keepdim(D::Minus1)?;
            second = (second + (c2 - n.broadcast_mul(&b)?)?.broadcast_mul(&r)?)?;
        }
        let scale = |t: Tensor| match weight {
            Some(w) => t.broadcast_mul(w),
            None => Ok(t),
        };
        Ok(Self {
            primal: crate::ops::affine(n, weight, bias)?,
            first: scale(first)?,
            second: Some(scale(second)?),
        })
    }

    /// Softmax over the last dimension. With `s = softmax(z0)`, `u1 = z1 - <z1>_s`:
    /// `s1 = s u1` and `s2 = s (z2 - <z2>_s - <u1^2>_s + u1^2)`.
    pub fn softmax_last_dim(&self) -> OpResult<Self> {
        let s = fused::softmax_last_dim(&self.primal)?;
        let expect = |t: &Tensor| (&s * t)?.sum_keepdim(D::Minus1);
        let u1 = self.first.broadcast_sub(&expect(&self.first)?)?;
        let u1_sq = u1.sqr()?;
        let mut inner = u1_sq.broadcast_sub(&expect(&u1_sq)?)?;
        if let Some(z2) = &self.second {
            inner = (inner + z2.broadcast_sub(&expect(z2)?)?)?;
        }
        Ok(Self {
            first: (&s * u1)?,
            second: Some((&s * inner)?),
            primal: s,
        })
    }

    /// Log-softmax over the last dimension. With `s = softmax(z0)` and `u1 = z1 - <z1>_s`:
    /// `y1 = u1` and `y2 = z2 - <z2>_s - <u1^2>_s`.
    pub fn log_softmax_last_dim(&self) -> OpResult<Self> {
        let s = fused::softmax_last_dim(&self.primal)?;
        let expect = |t: &Tensor| (&s * t)?.sum_keepdim(D::Minus1);
        let u1 = self.first.broadcast_sub(&expect(&self.first)?)?;
        let mut second = expect(&u1.sqr()?)?
            .neg()?
            .broadcast_as(u1.shape())?
            .contiguous()?;
        if let Some(z2) = &self.second {
            second = (second + z2.broadcast_sub(&expect(z2)?)?)?;
        }
        Ok(Self {
            primal: fused::log_softmax_last_dim(&self.primal)?,
            first: u1,
            second: Some(second),
        })
    }

    /// Mean cross-entropy of logits `(b, k)` against labels `(b,)`, like [`fused::cross_entropy`]: a
    /// jet of scalars. Per row, with `p = softmax(z0)` and `u1 = z1 - <z1>_p`, the first part is
    /// `<z1>_p - z1[y]` and the second `<z2>_p - z2[y] + <u1^2>_p`.
    pub fn cross_entropy(&self, labels: &Tensor) -> OpResult<Self> {
        let primal = fused::cross_entropy(&self.primal, labels)?;
        let p = fused::softmax_last_dim(&self.primal)?;
        let index = labels.to_dtype(candle_core::DType::U32)?.unsqueeze(1)?;
        let expect = |t: &Tensor| (&p * t)?.sum_keepdim(D::Minus1);
        let picked = |t: &Tensor| t.contiguous()?.gather(&index, 1);
        let mean_one = expect(&self.first)?;
        let first = (&mean_one - picked(&self.first)?)?.mean_all()?;
        let spread = expect(&self.first.broadcast_sub(&mean_one)?.sqr()?)?;
        let second = match &self.second {
            Some(z2) => ((spread + expect(z2)?)? - picked(z2)?)?,
            None => spread,
        };
        Ok(Self {
            primal,
            first,
            second: Some(second.mean_all()?),
        })
    }
}

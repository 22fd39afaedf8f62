//! Softmax, log-softmax and cross-entropy over the last dimension as fused ops whose backward is
//! itself a fused op (and differentiable to any order).
//!
//! With `p = softmax(z)`:
//!
//! | function | forward | backward for incoming `g` | its backward for incoming `u` |
//! |---|---|---|---|
//! | softmax | `p` | `p (g - <g, p>)` (`SoftmaxGrad`) | `d/dg`: same op on `u`; `d/dp`: `u (g - <g, p>) - g <u, p>` |
//! | log-softmax | `z - logsumexp z` | `g - p sum g` (`LogSoftmaxGrad`) | `d/dg`: `u - <u, p>`; `d/d log p`: `-u p sum g` |
//! | cross-entropy | `logsumexp z - z_y` per row | `g (p - onehot y)` | through softmax |
//!
//! candle's fused `softmax_last_dim` has no backward; its composite `softmax` and `cross_entropy`
//! are chains of several passes. Book: "Fused operations and speed".

use super::kernel::{Real, check_input, dispatch1, dispatch2, last_dim, rows, rows2};
use super::wanted::returned;
use crate::Error;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Shape, Tensor};

fn max<T: Real>(row: &[T]) -> T {
    row.iter().fold(T::neg_infinity(), |m, &v| m.max(v))
}

fn softmax<T: Real>(z: &[T], n: usize) -> Vec<T> {
    rows(z, n, |z, p| {
        let m = max(z);
        let mut sum = T::zero();
        for (p, &z) in p.iter_mut().zip(z) {
            *p = (z - m).exp_fast();
            sum = sum + *p;
        }
        let inv = sum.recip();
        p.iter_mut().for_each(|p| *p = *p * inv);
    })
}

fn softmax_grad<T: Real>(p: &[T], g: &[T], n: usize) -> Vec<T> {
    rows2(p, g, n, |p, g, out| {
        let gp = p.iter().zip(g).fold(T::zero(), |a, (&p, &g)| a + p * g);
        for ((out, &p), &g) in out.iter_mut().zip(p).zip(g) {
            *out = p * (g - gp);
        }
    })
}

/// `max + log sum exp(z - max)` of one row.
fn logsumexp<T: Real>(z: &[T]) -> T {
    let m = max(z);
    m + z
        .iter()
        .fold(T::zero(), |a, &v| a + (v - m).exp_fast())
        .ln()
}

fn log_softmax<T: Real>(z: &[T], n: usize) -> Vec<T> {
    rows(z, n, |z, out| {
        let lse = logsumexp(z);
        for (out, &z) in out.iter_mut().zip(z) {
            *out = z - lse;
        }
    })
}

fn log_softmax_grad<T: Real>(log_p: &[T], g: &[T], n: usize) -> Vec<T> {
    rows2(log_p, g, n, |log_p, g, out| {
        let sum_g = g.iter().fold(T::zero(), |a, &g| a + g);
        for ((out, &lp), &g) in out.iter_mut().zip(log_p).zip(g) {
            *out = g - lp.exp_fast() * sum_g;
        }
    })
}

fn cross_entropy_rows<T: Real>(z: &[T], labels: &[u32], n: usize) -> Vec<T> {
    z.chunks_exact(n)
        .zip(labels)
        .map(|(z, &y)| logsumexp(z) - z[y as usize])
        .collect()
}

struct Softmax;
struct SoftmaxGrad;
struct LogSoftmax;
struct LogSoftmaxGrad;
/// Per-row cross-entropy of logits `(b, k)` against labels `(b,)` u32 (checked in range).
struct CrossEntropy;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "advtrain-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((
            dispatch1!(self.name(), s, l, softmax, last_dim(l)),
            l.shape().clone(),
        ))
    }
    fn bwd(&self, _: &Tensor, p: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(returned(Some(p.apply_op2(&g.contiguous()?, SoftmaxGrad)?)))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "advtrain-softmax-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch2!(self.name(), s1, l1, s2, l2, softmax_grad, last_dim(l1));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        p: &Tensor,
        g: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_g = p.apply_op2(&u.contiguous()?, SoftmaxGrad)?;
        let gp = (g * p)?.sum_keepdim(D::Minus1)?;
        let up = (u * p)?.sum_keepdim(D::Minus1)?;
        let grad_p = ((u * g.broadcast_sub(&gp)?)? - g.broadcast_mul(&up)?)?;
        Ok((returned(Some(grad_p)), returned(Some(grad_g))))
    }
}

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "advtrain-log-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((
            dispatch1!(self.name(), s, l, log_softmax, last_dim(l)),
            l.shape().clone(),
        ))
    }
    fn bwd(&self, _: &Tensor, log_p: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(returned(Some(
            log_p.apply_op2(&g.contiguous()?, LogSoftmaxGrad)?,
        )))
    }
}

impl CustomOp2 for LogSoftmaxGrad {
    fn name(&self) -> &'static str {
        "advtrain-log-softmax-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch2!(self.name(), s1, l1, s2, l2, log_softmax_grad, last_dim(l1));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        log_p: &Tensor,
        g: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let p = log_p.exp()?;
        let up = (u * &p)?.sum_keepdim(D::Minus1)?;
        let grad_g = u.broadcast_sub(&up)?;
        let sum_g = g.sum_keepdim(D::Minus1)?;
        let grad_log_p = ((u * &p)?.broadcast_mul(&sum_g)? * -1.0)?;
        Ok((returned(Some(grad_log_p)), returned(Some(grad_g))))
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "advtrain-cross-entropy"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, k) = l1.shape().dims2()?;
        let labels = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::U32(v), Some((start, end))) => &v[start..end],
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "{}: labels must be contiguous u32",
                    self.name()
                )));
            }
        };
        if let Some((row, &y)) = labels.iter().enumerate().find(|(_, y)| **y as usize >= k) {
            return Err(candle_core::Error::Msg(format!(
                "{}: label {y} in row {row} is out of range for {k} classes",
                self.name()
            )));
        }
        let out = dispatch1!(self.name(), s1, l1, cross_entropy_rows, labels, k);
        Ok((out, Shape::from(b)))
    }
    fn bwd(
        &self,
        z: &Tensor,
        labels: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let k = z.dim(D::Minus1)?;
        let classes = Tensor::arange(0u32, k as u32, z.device())?.unsqueeze(0)?;
        let onehot = labels
            .unsqueeze(1)?
            .broadcast_eq(&classes)?
            .to_dtype(z.dtype())?;
        let p = z.apply_op1(Softmax)?;
        let grad_z = (p - onehot)?.broadcast_mul(&g.unsqueeze(1)?)?;
        Ok((returned(Some(grad_z)), None))
    }
}

/// Softmax over the last dimension, fused forward and backward, differentiable to any order (CPU;
/// [`crate::ops::softmax_last_dim`] elsewhere).
pub fn softmax_last_dim(z: &Tensor) -> candle_core::Result<Tensor> {
    check_input("z", z)?;
    if !z.device().is_cpu() {
        return crate::ops::softmax_last_dim(z);
    }
    z.contiguous()?.apply_op1(Softmax)
}

/// Log-softmax over the last dimension, fused like [`softmax_last_dim`].
pub fn log_softmax_last_dim(z: &Tensor) -> candle_core::Result<Tensor> {
    check_input("z", z)?;
    if !z.device().is_cpu() {
        return crate::ops::log_softmax_last_dim(z);
    }
    z.contiguous()?.apply_op1(LogSoftmax)
}

/// Mean cross-entropy of logits `(b, k)` against class labels `(b,)` (u32, u8 or i64), in one pass
/// forward and one backward; equal to `candle_nn::loss::cross_entropy`, differentiable to any order.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    check_input("logits", logits)?;
    let (b, _) = logits.dims2().map_err(|_| Error::InvalidArgument {
        name: "logits",
        reason: format!("shape {:?}; expected (batch, classes)", logits.dims()),
        fix: "flatten the leading dimensions into the batch".into(),
    })?;
    if labels.dims() != [b] {
        return Err(Error::InvalidArgument {
            name: "labels",
            reason: format!("shape {:?} for logits {:?}", labels.dims(), logits.dims()),
            fix: format!("pass one class index per row: shape ({b},)"),
        }
        .into());
    }
    if !logits.device().is_cpu() {
        crate::error::check_index_dtype("labels", labels)?;
        return candle_nn::loss::cross_entropy(logits, labels);
    }
    crate::error::check_indices("labels", labels)?;
    let labels = labels.to_dtype(DType::U32)?.contiguous()?;
    logits
        .contiguous()?
        .apply_op2(&labels, CrossEntropy)?
        .mean_all()
}

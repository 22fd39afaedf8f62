//! A per-feature scale and shift, `x w + b` over the last dimension (layer norm's learned part), as
//! fused ops whose backward is differentiable to any order.
//!
//! candle's form, `x.broadcast_mul(w)?.broadcast_add(b)`, is four graph nodes, and its backward sums
//! the gradients of `w` and `b` over every row with candle's strided reduction: in the two-block
//! encoder of the side-by-side benchmark those sums took 15% of a gradient-penalty step, half of it
//! in the inner pass, which needs neither. For an incoming `u` (rows of `x` flattened):
//!
//! | op | value | gradient of `x` | of `w` | of `b` |
//! |---|---|---|---|---|
//! | `ScaleShift(x, w, b)` | `x w + b` | `Scale(u, w)` | `1^T (u x)` | `1^T u` |
//! | `Scale(x, w)` | `x w` | `Scale(u, w)` | `1^T (u x)` | |
//!
//! The column sums `1^T v` are products ([`super::linear::sum_rows`]), differentiable like the rest,
//! and each gradient is computed only where it takes part and is wanted ([`super::wanted`]).
//! Book: "Fused operations and speed".

use super::kernel::{Data, Real, data, last_dim, rows};
use super::linear::sum_rows;
use super::wanted::{needs_gradient, returned};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// `x w + b` row by row; `b` absent for [`Scale`].
fn scale_shift<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, n: usize) -> Vec<T> {
    rows(x, n, |x, out| match b {
        Some(b) => {
            for (((out, &x), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
                *out = x * w + b;
            }
        }
        None => {
            for ((out, &x), &w) in out.iter_mut().zip(x).zip(w) {
                *out = x * w;
            }
        }
    })
}

/// The forward pass of either op on CPU storage: checks that `w` (and `b`) are rows of `x`'s width
/// and of its dtype.
fn forward(
    name: &str,
    (sx, lx): (&CpuStorage, &Layout),
    (sw, lw): (&CpuStorage, &Layout),
    shift: Option<(&CpuStorage, &Layout)>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let n = last_dim(lx);
    let row = |l: &Layout, what: &str| {
        if l.dims() != [n] {
            return Err(candle_core::Error::Msg(format!(
                "{name}: the {what} has shape {:?}, expected ({n},) for inputs {:?}",
                l.dims(),
                lx.dims()
            )));
        }
        Ok(())
    };
    row(lw, "scale")?;
    if let Some((_, lb)) = shift {
        row(lb, "shift")?;
    }
    let b = shift.map(|(sb, lb)| data(name, sb, lb)).transpose()?;
    let out = match (data(name, sx, lx)?, data(name, sw, lw)?, b) {
        (Data::F32(x), Data::F32(w), None) => CpuStorage::F32(scale_shift(x, w, None, n)),
        (Data::F32(x), Data::F32(w), Some(Data::F32(b))) => {
            CpuStorage::F32(scale_shift(x, w, Some(b), n))
        }
        (Data::F64(x), Data::F64(w), None) => CpuStorage::F64(scale_shift(x, w, None, n)),
        (Data::F64(x), Data::F64(w), Some(Data::F64(b))) => {
            CpuStorage::F64(scale_shift(x, w, Some(b), n))
        }
        _ => {
            return Err(candle_core::Error::Msg(format!(
                "{name}: the input, scale and shift have different dtypes"
            )));
        }
    };
    Ok((out, lx.shape().clone()))
}

/// `x w` for rows `x` and a row `w`.
struct Scale;

/// `x w + b` for rows `x` and rows `w`, `b`.
struct ScaleShift;

/// The gradients of `x` and `w` of `x w (+ b)` for an incoming `u`, each only where needed.
fn scale_gradients(
    x: &Tensor,
    w: &Tensor,
    u: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let u = u.contiguous()?;
    let grad_x = match needs_gradient(x) {
        true => Some(u.apply_op2(&w.contiguous()?, Scale)?),
        false => None,
    };
    let grad_w = match needs_gradient(w) {
        true => Some(column_sums(&(&u * x)?)?),
        false => None,
    };
    Ok((grad_x, grad_w))
}

/// The sums over every row of `v` (all dimensions but the last).
fn column_sums(v: &Tensor) -> candle_core::Result<Tensor> {
    let n = v.dim(candle_core::D::Minus1)?;
    sum_rows(&v.reshape((v.elem_count() / n, n))?)
}

impl CustomOp2 for Scale {
    fn name(&self) -> &'static str {
        "advtrain-scale"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(self.name(), (sx, lx), (sw, lw), None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w) = scale_gradients(x, w, u)?;
        Ok((returned(grad_x), returned(grad_w)))
    }
}

impl CustomOp3 for ScaleShift {
    fn name(&self) -> &'static str {
        "advtrain-scale-shift"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(self.name(), (sx, lx), (sw, lw), Some((sb, lb)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w) = scale_gradients(x, w, u)?;
        let grad_b = match needs_gradient(b) {
            true => Some(column_sums(&u.contiguous()?)?),
            false => None,
        };
        Ok((returned(grad_x), returned(grad_w), returned(grad_b)))
    }
}

/// `y w + b` over the last dimension of `y`, either part optional, as one fused op on the CPU
/// (candle's broadcast ops elsewhere, or when `w` is absent): layer norm's scale and shift.
pub(crate) fn affine(
    y: Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if !y.device().is_cpu() {
        return crate::ops::affine(y, weight, bias).map_err(Into::into);
    }
    let y = y.contiguous()?;
    match (weight, bias) {
        (Some(w), Some(b)) => y.apply_op3(&w.contiguous()?, &b.contiguous()?, ScaleShift),
        (Some(w), None) => y.apply_op2(&w.contiguous()?, Scale),
        (None, _) => crate::ops::affine(y, None, bias).map_err(Into::into),
    }
}

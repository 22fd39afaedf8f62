//! Linear layers `x W^T + b` as ops that compute only the gradients someone needs.
//!
//! candle's matmul backward always computes both operands' gradients, one matrix product each: the
//! input's gradient of a first layer whose input is data, and the weights' gradients in the inner
//! backward passes of gradient penalty and Hutchinson, which are thrown away. Three ops, closed
//! under differentiation, each computing an argument's gradient only when it takes part in
//! differentiation and is wanted (see [`super::wanted`]); for an incoming gradient `u`:
//!
//! | op | value | gradient of the first argument | of the second |
//! |---|---|---|---|
//! | `Linear(x, w)` | `x w^T` | `InputGrad(u, w) = u w` | `WeightGrad(u, x) = u^T x` |
//! | `InputGrad(g, w)` | `g w` | `Linear(u, w) = u w^T` | `WeightGrad(g, u) = g^T u` |
//! | `WeightGrad(a, b)` | `a^T b` | `Linear(b, u) = b u^T` | `InputGrad(a, u) = a u` |
//!
//! The bias is added in place after the product (no broadcast node); its gradient is `u` summed over
//! rows, taken as the product `1^T u` (`InputGrad(1^T, u)`, differentiable like the rest). The
//! products run on [`super::product`]: candle's CPU product without its zero fill. Book: "Fused
//! operations and speed".

use super::kernel::{check_input, invalid};
use super::product::product;
use super::wanted::{needs_gradient, returned};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// The three products. `Linear` takes an optional third argument, the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Product {
    /// `a b^T`: `(m, k) x (n, k) -> (m, n)`.
    Linear,
    /// `a b`: `(m, n) x (n, k) -> (m, k)`.
    InputGrad,
    /// `a^T b`: `(m, n) x (m, k) -> (n, k)`.
    WeightGrad,
}

impl Product {
    fn name(self) -> &'static str {
        match self {
            Product::Linear => "advtrain-linear",
            Product::InputGrad => "advtrain-linear-input-grad",
            Product::WeightGrad => "advtrain-linear-weight-grad",
        }
    }

    /// `(m, n, k)` of candle's `(m, k) x (k, n)` and the operands' layouts in that form.
    fn plan(
        self,
        la: &Layout,
        lb: &Layout,
    ) -> candle_core::Result<(Shape, [usize; 3], [Layout; 2])> {
        let (a0, a1) = la.shape().dims2()?;
        let (b0, b1) = lb.shape().dims2()?;
        // (m, n, k, the dimension of b that must equal k)
        let (m, n, k, inner) = match self {
            Product::Linear => (a0, b0, a1, b1),
            Product::InputGrad => (a0, b1, a1, b0),
            Product::WeightGrad => (a1, b1, a0, b0),
        };
        if inner != k {
            return Err(candle_core::Error::Msg(format!(
                "{}: shapes {:?} and {:?} do not multiply",
                self.name(),
                la.dims(),
                lb.dims()
            )));
        }
        let layouts = match self {
            Product::Linear => [la.clone(), lb.transpose(0, 1)?],
            Product::InputGrad => [la.clone(), lb.clone()],
            Product::WeightGrad => [la.transpose(0, 1)?, lb.clone()],
        };
        Ok((Shape::from((m, n)), [m, n, k], layouts))
    }

    fn forward(
        self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (shape, [m, n, k], [la, lb]) = self.plan(la, lb)?;
        Ok((product(sa, &la, sb, &lb, (m, n, k))?, shape))
    }

    /// The gradients of `(a, b)` for an incoming `u`, each only where needed.
    fn backward(
        self,
        a: &Tensor,
        b: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 2]> {
        let u = u.contiguous()?;
        let grad_a = match (needs_gradient(a), self) {
            (false, _) => None,
            (true, Product::Linear) => Some(u.apply_op2(b, Product::InputGrad)?),
            (true, Product::InputGrad) => Some(u.apply_op2(b, Product::Linear)?),
            (true, Product::WeightGrad) => Some(b.apply_op2(&u, Product::Linear)?),
        };
        let grad_b = match (needs_gradient(b), self) {
            (false, _) => None,
            (true, Product::Linear) => Some(u.apply_op2(a, Product::WeightGrad)?),
            (true, Product::InputGrad) => Some(a.apply_op2(&u, Product::WeightGrad)?),
            (true, Product::WeightGrad) => Some(a.apply_op2(&u, Product::InputGrad)?),
        };
        Ok([grad_a, grad_b])
    }
}

/// Adds the bias row to every row of `out` (`n` columns).
fn add_bias(
    out: &mut CpuStorage,
    bias: &CpuStorage,
    lb: &Layout,
    n: usize,
) -> candle_core::Result<()> {
    let Some((start, end)) = lb.contiguous_offsets().filter(|(s, e)| e - s == n) else {
        return Err(candle_core::Error::Msg(format!(
            "advtrain-linear: the bias must be contiguous with {n} entries"
        )));
    };
    fn add<T: Copy + std::ops::AddAssign>(out: &mut [T], bias: &[T]) {
        for row in out.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
        }
    }
    match (out, bias) {
        (CpuStorage::F32(out), CpuStorage::F32(b)) => add(out, &b[start..end]),
        (CpuStorage::F64(out), CpuStorage::F64(b)) => add(out, &b[start..end]),
        _ => {
            return Err(candle_core::Error::Msg(
                "advtrain-linear: the bias's dtype differs from the input's".into(),
            ));
        }
    }
    Ok(())
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        Product::name(*self)
    }
    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(sa, la, sb, lb)
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [grad_a, grad_b] = self.backward(a, b, u)?;
        Ok((returned(grad_a), returned(grad_b)))
    }
}

impl CustomOp3 for Product {
    fn name(&self) -> &'static str {
        Product::name(*self)
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
        let (mut out, shape) = self.forward(sx, lx, sw, lw)?;
        add_bias(&mut out, sb, lb, shape.dims()[1])?;
        Ok((out, shape))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [grad_x, grad_w] = self.backward(x, w, u)?;
        let grad_b = if needs_gradient(b) {
            Some(sum_rows(u)?)
        } else {
            None
        };
        Ok((returned(grad_x), returned(grad_w), returned(grad_b)))
    }
}

/// `u` summed over its rows, as the product `1^T u`: candle's `sum(0)` walks the rows with a strided
/// index and took 0.49 ms for 256 x 512 f32 where the product takes 0.01 ms (one thread).
pub(crate) fn sum_rows(u: &Tensor) -> candle_core::Result<Tensor> {
    let (m, n) = u.dims2()?;
    let ones = Tensor::ones((1, m), u.dtype(), u.device())?;
    ones.apply_op2(&u.contiguous()?, Product::InputGrad)?
        .reshape(n)
}

/// `m` summed over its columns, `(m, n)` to `(m,)`, as the product `m 1`.
pub(crate) fn sum_columns(m: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, n) = m.dims2()?;
    let ones = Tensor::ones((n, 1), m.dtype(), m.device())?;
    m.contiguous()?
        .apply_op2(&ones, Product::InputGrad)?
        .reshape(rows)
}

/// `x W^T + b` over the last dimension of `x` (`(..., in)`), with `weight` `(out, in)` and `bias`
/// `(out,)` as in `candle_nn::Linear`. Equal to `candle_nn::Linear::forward`; its backward computes
/// the products it needs only (see the module doc) and is differentiable to any order. CPU; on
/// another device, candle's matmul.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    check_input("x", x)?;
    let (out, inputs) = weight.dims2().map_err(|_| {
        invalid(
            "weight",
            format!("shape {:?}", weight.dims()),
            "pass the weight as (out_features, in_features)".into(),
        )
    })?;
    if out == 0 {
        return Err(invalid(
            "weight",
            format!("shape {:?}: no output features", weight.dims()),
            "give the layer at least one output feature".into(),
        )
        .into());
    }
    let dims = x.dims();
    let last = dims[dims.len() - 1];
    if last != inputs {
        return Err(invalid(
            "x",
            format!("last dimension {last} for a weight {:?}", weight.dims()),
            format!("pass inputs with {inputs} features in the last dimension"),
        )
        .into());
    }
    if let Some(b) = bias
        && b.dims() != [out]
    {
        return Err(invalid(
            "bias",
            format!("shape {:?} for a weight {:?}", b.dims(), weight.dims()),
            format!("pass a bias of shape ({out},)"),
        )
        .into());
    }
    for (name, t) in [("weight", Some(weight)), ("bias", bias)] {
        if let Some(t) = t
            && t.dtype() != x.dtype()
        {
            return Err(invalid(
                name,
                format!("dtype {:?} for x of dtype {:?}", t.dtype(), x.dtype()),
                "convert both to the same dtype with to_dtype".into(),
            )
            .into());
        }
    }
    if !x.device().is_cpu() {
        return Ok(crate::ops::affine(
            x.broadcast_matmul(&weight.t()?)?,
            None,
            bias,
        )?);
    }
    let rows = x.elem_count() / inputs;
    let flat = if dims.len() == 2 {
        x.contiguous()?
    } else {
        x.contiguous()?.reshape((rows, inputs))?
    };
    let y = match bias {
        Some(b) => flat.apply_op3(&weight.contiguous()?, &b.contiguous()?, Product::Linear)?,
        None => flat.apply_op2(&weight.contiguous()?, Product::Linear)?,
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("x has a dimension") = out;
    Ok(if dims.len() == 2 {
        y
    } else {
        y.reshape(shape)?
    })
}

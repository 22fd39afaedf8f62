//! Multi-head attention `softmax(q_h k_h^T / sqrt(d_h) + bias) v_h`, heads merged, with its two
//! products as ops over the `(batch, tokens, width)` tensors the linear layers give.
//!
//! The usual form splits each of `q`, `k`, `v` into heads by `reshape`, `transpose` and
//! `contiguous`, transposes the keys, and merges the heads again after the second product: about
//! fifteen graph nodes per layer, each a copy forward and, in candle's backward, a zero-filled
//! gradient buffer plus an addition. Here a head is a strided view: head `h` of row `i` is the
//! columns `h d_h .. (h + 1) d_h` of row `i`, and each product runs per (sequence, head) pair on
//! [`super::product::strided_product`], the rows `width` elements apart. Three ops, closed under
//! differentiation like [`super::linear`]'s, for `a`, `u` `(b, n, width)`, `c` `(b, m, width)`, `p`
//! `(b, heads, n, m)` and a scale `s`:
//!
//! | op | value, per head | gradient of the first argument | of the second |
//! |---|---|---|---|
//! | `Scores(a, c)` | `s a_h c_h^T`, `(b, heads, n, m)` | `Context(u, c)` | `ContextT(u, a)` |
//! | `Context(p, c)` | `s p_h c_h`, `(b, n, width)` | `Scores(u, c)` | `ContextT(p, u)` |
//! | `ContextT(p, a)` | `s p_h^T a_h`, `(b, m, width)` | `Scores(a, u)` | `Context(p, u)` |
//!
//! The attention is `Context(softmax(Scores(q, k) + bias), v)` with `s = 1 / sqrt(d_h)` for the
//! scores and 1 for the context: four nodes. Each op computes an argument's gradient only where
//! it is wanted ([`super::wanted`]). Composite form: [`crate::ops::attention`]. Book: "Fused
//! operations and speed".

use super::kernel::{Data, Real, check_input, data, invalid};
use super::product::{DisjointWrites, PARALLEL_MULTIPLY_ADDS, strided_product};
use super::wanted::{needs_gradient, returned};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `s a_h c_h^T`: `(b, n, w) x (b, m, w) -> (b, heads, n, m)`.
    Scores,
    /// `s p_h c_h`: `(b, heads, n, m) x (b, m, w) -> (b, n, w)`.
    Context,
    /// `s p_h^T a_h`: `(b, heads, n, m) x (b, n, w) -> (b, m, w)`.
    ContextT,
}

/// One of the three products, with the number of heads and the scale `s`.
#[derive(Clone, Copy, Debug)]
struct HeadProduct {
    kind: Kind,
    heads: usize,
    scale: f64,
}

/// The sizes of one product: sequences, heads, the two token counts of the scores `(n, m)`, the
/// width and the head width.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    batch: usize,
    heads: usize,
    n: usize,
    m: usize,
    width: usize,
    head: usize,
}

impl HeadProduct {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Scores => "advtrain-attention-scores",
            Kind::Context => "advtrain-attention-context",
            Kind::ContextT => "advtrain-attention-context-t",
        }
    }

    fn error(&self, reason: String) -> candle_core::Error {
        candle_core::Error::Msg(format!("{}: {reason}", self.name()))
    }

    /// The sizes and the output shape, from the operands' shapes.
    fn plan(&self, first: &[usize], second: &[usize]) -> candle_core::Result<(Sizes, Shape)> {
        let wrong = || {
            self.error(format!(
                "operands of shapes {first:?} and {second:?} with {} heads",
                self.heads
            ))
        };
        let heads = self.heads;
        let (sizes, shape) = match (self.kind, first, second) {
            (Kind::Scores, &[b, n, w], &[b2, m, w2]) if b == b2 && w == w2 => {
                (Sizes::new(b, heads, n, m, w), vec![b, heads, n, m])
            }
            (Kind::Context, &[b, h, n, m], &[b2, m2, w]) if b == b2 && h == heads && m == m2 => {
                (Sizes::new(b, heads, n, m, w), vec![b, n, w])
            }
            (Kind::ContextT, &[b, h, n, m], &[b2, n2, w]) if b == b2 && h == heads && n == n2 => {
                (Sizes::new(b, heads, n, m, w), vec![b, m, w])
            }
            _ => return Err(wrong()),
        };
        // Every size positive: the pointer offsets in `compute` stay inside the operands.
        let empty = [sizes.batch, sizes.n, sizes.m, sizes.width].contains(&0);
        if heads == 0 || sizes.width % heads != 0 || empty {
            return Err(wrong());
        }
        Ok((sizes, Shape::from(shape)))
    }

    /// The output's elements. Per (sequence, head) pair one product on strided views: a head of a
    /// `(tokens, width)` sequence is `(tokens, head)` with rows `width` apart; a head's scores are
    /// a contiguous `(n, m)` block.
    fn compute<T: Real>(&self, first: &[T], second: &[T], sizes: Sizes) -> Vec<T> {
        let Sizes {
            batch,
            heads,
            n,
            m,
            width,
            head,
        } = sizes;
        let pairs = batch * heads;
        let len = match self.kind {
            Kind::Scores => pairs * n * m,
            Kind::Context => batch * n * width,
            Kind::ContextT => batch * m * width,
        };
        let scale = T::constant(self.scale);
        let mut out = Vec::<T>::with_capacity(len);
        let dst = DisjointWrites(out.spare_capacity_mut().as_mut_ptr().cast::<T>());
        let w = width as isize;
        let one_pair = |pair: usize| {
            let (b, h) = (pair / heads, pair % heads);
            // Offsets of this pair's scores block and of its head in an (n, width) and an
            // (m, width) sequence.
            let scores = pair * n * m;
            let in_n = b * n * width + h * head;
            let in_m = b * m * width + h * head;
            // SAFETY: `plan` checked the operands' shapes (every size positive), and `data` gave
            // slices of exactly those sizes, so every offset below addresses elements inside them;
            // each pair writes its own block of `out` (a scores block, or its head's columns of a
            // sequence), every element of it, and all blocks together cover the `len` elements.
            unsafe {
                let at = |s: &[T], offset: usize| s.as_ptr().add(offset);
                match self.kind {
                    Kind::Scores => strided_product(
                        (n, m, head),
                        dst.at(scores),
                        m,
                        (at(first, in_n), w, 1),
                        (at(second, in_m), 1, w),
                        scale,
                        gemm::Parallelism::None,
                    ),
                    Kind::Context => strided_product(
                        (n, head, m),
                        dst.at(in_n),
                        width,
                        (at(first, scores), m as isize, 1),
                        (at(second, in_m), w, 1),
                        scale,
                        gemm::Parallelism::None,
                    ),
                    Kind::ContextT => strided_product(
                        (m, head, n),
                        dst.at(in_m),
                        width,
                        (at(first, scores), 1, m as isize),
                        (at(second, in_n), w, 1),
                        scale,
                        gemm::Parallelism::None,
                    ),
                }
            }
        };
        // A pair's product is small (tokens x tokens x head): the pairs, not the products, go to
        // the pool, once there is enough work for a second thread.
        let work = pairs * n * m * head;
        if pairs > 1 && rayon::current_num_threads() > 1 && work >= PARALLEL_MULTIPLY_ADDS {
            (0..pairs).into_par_iter().for_each(one_pair);
        } else {
            (0..pairs).for_each(one_pair);
        }
        // SAFETY: every element was written above (see the pairs' blocks).
        unsafe { out.set_len(len) };
        out
    }

    /// The gradients of `(first, second)` for an incoming `u`, each only where needed.
    fn backward(
        &self,
        first: &Tensor,
        second: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let u = u.contiguous()?;
        let op = |kind| HeadProduct { kind, ..*self };
        let (grad_first, grad_second) = match self.kind {
            Kind::Scores => ((Kind::Context, &u, second), (Kind::ContextT, &u, first)),
            Kind::Context => ((Kind::Scores, &u, second), (Kind::ContextT, first, &u)),
            Kind::ContextT => ((Kind::Scores, second, &u), (Kind::Context, first, &u)),
        };
        let apply = |wanted: bool, (kind, a, b): (Kind, &Tensor, &Tensor)| match wanted {
            true => a.apply_op2(b, op(kind)).map(Some),
            false => Ok(None),
        };
        Ok((
            returned(apply(needs_gradient(first), grad_first)?),
            returned(apply(needs_gradient(second), grad_second)?),
        ))
    }
}

impl Sizes {
    fn new(batch: usize, heads: usize, n: usize, m: usize, width: usize) -> Self {
        Self {
            batch,
            heads,
            n,
            m,
            width,
            head: width / heads.max(1),
        }
    }
}

impl CustomOp2 for HeadProduct {
    fn name(&self) -> &'static str {
        HeadProduct::name(self)
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (sizes, shape) = self.plan(l1.dims(), l2.dims())?;
        let out = match (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?) {
            (Data::F32(a), Data::F32(b)) => CpuStorage::F32(self.compute(a, b, sizes)),
            (Data::F64(a), Data::F64(b)) => CpuStorage::F64(self.compute(a, b, sizes)),
            _ => return Err(self.error("the two operands have different dtypes".into())),
        };
        Ok((out, shape))
    }
    fn bwd(
        &self,
        first: &Tensor,
        second: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward(first, second, u)
    }
}

/// Multi-head attention: queries `q` `(batch, n, width)`, keys and values `k`, `v`
/// `(batch, m, width)`, `heads` heads of `width / heads` columns each, and an optional additive
/// `key_bias` broadcast to the scores `(batch, heads, n, m)` (a large negative number at padded
/// keys, for instance `(batch, 1, 1, m)`). Returns the context `(batch, n, width)`, the heads
/// merged back in order: `softmax(q_h k_h^T / sqrt(width / heads) + key_bias) v_h` per head.
///
/// Equal to [`crate::ops::attention`]; its two products are fused ops over strided heads (see the
/// module doc), differentiable to any order. CPU; on another device, the composite form.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: Option<&Tensor>,
    heads: usize,
) -> candle_core::Result<Tensor> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        check_input(name, t)?;
        if t.rank() != 3 {
            return Err(invalid(
                name,
                format!("shape {:?}", t.dims()),
                "pass (batch, tokens, width)".into(),
            )
            .into());
        }
        if t.dtype() != q.dtype() || !t.device().same_device(q.device()) {
            return Err(invalid(
                name,
                format!(
                    "{:?} on {:?} for q {:?} on {:?}",
                    t.dtype(),
                    t.device(),
                    q.dtype(),
                    q.device()
                ),
                "put q, k and v on one device with one dtype (to_dtype, to_device)".into(),
            )
            .into());
        }
    }
    let (b, n, width) = q.dims3()?;
    let m = k.dim(1)?;
    for (name, t) in [("k", k), ("v", v)] {
        if t.dims() != [b, m, width] {
            return Err(invalid(
                name,
                format!(
                    "shape {:?} for queries {:?} and keys {:?}",
                    t.dims(),
                    q.dims(),
                    k.dims()
                ),
                format!("pass keys and values of one shape (batch {b}, tokens, width {width})"),
            )
            .into());
        }
    }
    let head = crate::ops::head_width(width, heads)?;
    if let Some(bias) = key_bias {
        let fits = bias.rank() == 4
            && bias
                .dims()
                .iter()
                .zip([b, heads, n, m])
                .all(|(&d, want)| d == 1 || d == want);
        if !fits || bias.dtype() != q.dtype() || !bias.device().same_device(q.device()) {
            return Err(invalid(
                "key_bias",
                format!(
                    "{:?} {:?} on {:?}",
                    bias.dims(),
                    bias.dtype(),
                    bias.device()
                ),
                format!(
                    "pass a bias that broadcasts to the scores ({b}, {heads}, {n}, {m}), such as \
                     ({b}, 1, 1, {m}), with q's dtype and device"
                ),
            )
            .into());
        }
    }
    if !q.device().is_cpu() {
        return crate::ops::attention(q, k, v, key_bias, heads);
    }
    let op = |kind, scale| HeadProduct { kind, heads, scale };
    let scores = q.contiguous()?.apply_op2(
        &k.contiguous()?,
        op(Kind::Scores, 1.0 / (head as f64).sqrt()),
    )?;
    let scores = match key_bias {
        Some(bias) => scores.broadcast_add(bias)?,
        None => scores,
    };
    super::softmax_last_dim(&scores)?
        .contiguous()?
        .apply_op2(&v.contiguous()?, op(Kind::Context, 1.0))
}

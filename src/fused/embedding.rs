//! The embedding lookup `matrix[ids]` as an op whose backward adds the rows' gradients into one
//! buffer, and only when someone wants the matrix's gradient.
//!
//! candle's `index_select` backward builds the matrix's gradient as a zero matrix, adds the rows
//! into a copy of it (`index_add` is not in place), and candle's backward then adds that into one
//! more zero matrix: four `(vocabulary, width)` buffers and as many passes over them for a lookup
//! of a few hundred rows. For a MiniLM-sized vocabulary that is 47 MB each, in every backward pass,
//! also in the inner passes of gradient penalty and Hutchinson, where only the gradient at the
//! embedding output is read. Two ops, closed under differentiation, for `ids` `(rows,)` and an
//! incoming gradient `u`:
//!
//! | op | value | gradient of its first argument |
//! |---|---|---|
//! | `Lookup(matrix, ids)` | `matrix[ids]`, `(rows, width)` | `Scatter(u, ids)` |
//! | `Scatter(g, ids)` | zeros `(vocabulary, width)` with `g`'s rows added at `ids` | `Lookup(u, ids)` |
//!
//! `Lookup` leaves the matrix's gradient out where [`super::wanted`] says nobody wants it (a
//! variable outside [`super::backward_for`]'s list). Book: "Fused operations and speed".

use super::kernel::{Data, Real, check_input, data, invalid};
use super::wanted::{needs_gradient, returned};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

#[derive(Clone, Copy, Debug)]
enum Rows {
    /// `matrix[ids]`.
    Lookup,
    /// The rows of `g` added into a zero matrix of `vocabulary` rows at `ids`.
    Scatter { vocabulary: usize },
}

impl Rows {
    fn name(&self) -> &'static str {
        match self {
            Rows::Lookup => "advtrain-embedding",
            Rows::Scatter { .. } => "advtrain-embedding-grad",
        }
    }

    fn error(&self, reason: String) -> candle_core::Error {
        candle_core::Error::Msg(format!("{}: {reason}", self.name()))
    }

    /// The ids as indices, each checked below `limit` (an error naming `ids` otherwise).
    fn indices(&self, s: &CpuStorage, l: &Layout, limit: usize) -> candle_core::Result<Vec<usize>> {
        let Some((start, end)) = l.contiguous_offsets() else {
            return Err(self.error("the ids must be contiguous".into()));
        };
        let ids: Vec<usize> = match s {
            CpuStorage::U8(v) => v[start..end].iter().map(|&i| i as usize).collect(),
            CpuStorage::U32(v) => v[start..end].iter().map(|&i| i as usize).collect(),
            CpuStorage::I64(v) => v[start..end]
                .iter()
                .map(|&i| usize::try_from(i).unwrap_or(usize::MAX))
                .collect(),
            other => {
                return Err(self.error(format!("ids of dtype {:?}", other.dtype())));
            }
        };
        let bad = |reason: String| -> candle_core::Error {
            let fix = format!(
                "pass ids from 0 to {} (the matrix's rows)",
                limit.max(1) - 1
            );
            invalid("ids", reason, fix).into()
        };
        match ids.iter().find(|&&i| i >= limit) {
            Some(&usize::MAX) => Err(bad("a negative id".into())),
            Some(id) => Err(bad(format!("id {id} for a matrix of {limit} rows"))),
            None => Ok(ids),
        }
    }

    fn compute<T: Real>(&self, values: &[T], ids: &[usize], width: usize) -> Vec<T> {
        match self {
            Rows::Lookup => {
                let mut out = Vec::with_capacity(ids.len() * width);
                for &i in ids {
                    out.extend_from_slice(&values[i * width..(i + 1) * width]);
                }
                out
            }
            Rows::Scatter { vocabulary } => {
                // A zeroed allocation: for a large matrix the pages come zeroed from the system,
                // so the only pass over the whole matrix is the caller's.
                let mut out = vec![T::zero(); vocabulary * width];
                for (row, &i) in values.chunks_exact(width).zip(ids) {
                    let target = &mut out[i * width..(i + 1) * width];
                    target.iter_mut().zip(row).for_each(|(t, &g)| *t = *t + g);
                }
                out
            }
        }
    }
}

impl CustomOp2 for Rows {
    fn name(&self) -> &'static str {
        Rows::name(self)
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = l1.shape().dims2()?;
        let (limit, out_rows) = match self {
            Rows::Lookup => (rows, l2.shape().elem_count()),
            Rows::Scatter { vocabulary } => {
                if rows != l2.shape().elem_count() {
                    let ids = l2.shape().elem_count();
                    return Err(self.error(format!("{rows} rows for {ids} ids")));
                }
                (*vocabulary, *vocabulary)
            }
        };
        let ids = self.indices(s2, l2, limit)?;
        let out = match data(self.name(), s1, l1)? {
            Data::F32(v) => CpuStorage::F32(self.compute(v, &ids, width)),
            Data::F64(v) => CpuStorage::F64(self.compute(v, &ids, width)),
        };
        Ok((out, Shape::from((out_rows, width))))
    }
    fn bwd(
        &self,
        first: &Tensor,
        ids: &Tensor,
        _: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !needs_gradient(first) {
            return Ok((None, None));
        }
        let back = match self {
            Rows::Lookup => Rows::Scatter {
                vocabulary: first.dim(0)?,
            },
            Rows::Scatter { .. } => Rows::Lookup,
        };
        let grad = u.contiguous()?.apply_op2(ids, back)?;
        Ok((returned(Some(grad)), None))
    }
}

/// Checks that `ids` holds token ids: u32, i64 or u8.
pub(crate) fn check_ids(ids: &Tensor) -> crate::Result<()> {
    if matches!(ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Ok(());
    }
    Err(invalid(
        "ids",
        format!("dtype {:?}", ids.dtype()),
        "pass token ids as u32, i64 or u8".into(),
    ))
}

/// The rows of `matrix` `(vocabulary, width)` at `ids` (u32, i64 or u8, any shape): a tensor of shape
/// `ids`' shape followed by `width`, as `candle_nn::Embedding::forward` gives. Equal to
/// `matrix.index_select(ids.flatten_all(), 0)` reshaped; its backward builds the matrix's gradient
/// in one buffer, and not at all in a pass that does not want it (see the module doc). f32 and f64
/// on the CPU; another dtype or device takes candle's `index_select`.
pub fn embedding(matrix: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    check_ids(ids)?;
    let (_, width) = matrix.dims2().map_err(|_| {
        candle_core::Error::from(invalid(
            "matrix",
            format!("shape {:?}", matrix.dims()),
            "pass the embedding matrix as (vocabulary, width)".into(),
        ))
    })?;
    let mut shape = ids.dims().to_vec();
    shape.push(width);
    let flat = ids.flatten_all()?;
    let fused = matrix.device().is_cpu() && matches!(matrix.dtype(), DType::F32 | DType::F64);
    let rows = if fused {
        check_input("matrix", matrix)?;
        matrix
            .contiguous()?
            .apply_op2(&flat.contiguous()?, Rows::Lookup)?
    } else {
        matrix.index_select(&flat, 0)?
    };
    rows.reshape(shape)
}

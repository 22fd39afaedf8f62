//! The matrix product under the fused ops: candle's CPU product without its zero fill.
//!
//! candle's CPU matmul allocates its output as `vec![0; m * n]` and then asks `gemm` to overwrite
//! it (`read_dst = false`: `gemm` writes `dst = lhs rhs` without reading `dst`). The fill is a full
//! pass over the output that nothing reads: in a profile of the MLP's plain step (one thread, the
//! side-by-side bench) it took 5.8% of the step, more than the zero fills of candle's backprop.
//! [`product`] makes the same `gemm` call, with the same strides and the same thread count, into
//! memory that is not filled first, so its values are candle's bit for bit (a test compares them).
//! `fused::linear`'s three products and `fused::conv2d`'s run on it; `fused::attention`'s per-head
//! products call [`strided_product`], the same `gemm` call on raw strided blocks.
//! Book: "Fused operations and speed", section "A new machine".

use super::kernel::Real;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

/// `(m, k) x (k, n) -> (m, n)` of two CPU storages under their layouts (any strides), as candle's
/// `CpuStorage::matmul` with a batch of one computes it. f32 and f64 run on `gemm` directly; any
/// other dtype, or two different ones, goes to candle's own matmul and its errors.
pub(crate) fn product(
    sa: &CpuStorage,
    la: &Layout,
    sb: &CpuStorage,
    lb: &Layout,
    (m, n, k): (usize, usize, usize),
) -> candle_core::Result<CpuStorage> {
    match (sa, sb) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            Ok(CpuStorage::F32(product_of(a, la, b, lb, (m, n, k))?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            Ok(CpuStorage::F64(product_of(a, la, b, lb, (m, n, k))?))
        }
        _ => sa.matmul(sb, (1, m, n, k), la, lb),
    }
}

/// The strides `(row, column)` of a `(rows, cols)` operand, after checking that its layout has that
/// shape and that every element it addresses lies inside `len`.
fn strides(
    which: &str,
    layout: &Layout,
    (rows, cols): (usize, usize),
    len: usize,
) -> candle_core::Result<(isize, isize)> {
    let error = |reason: String| {
        candle_core::Error::Msg(format!(
            "advtrain matrix product, {which} operand: {reason}"
        ))
    };
    if layout.dims() != [rows, cols] {
        return Err(error(format!(
            "shape {:?}, expected [{rows}, {cols}]",
            layout.dims()
        )));
    }
    let (rs, cs) = (layout.stride()[0], layout.stride()[1]);
    if rows > 0 && cols > 0 {
        let last = layout.start_offset() + (rows - 1) * rs + (cols - 1) * cs;
        if last >= len {
            return Err(error(format!(
                "its layout reaches element {last} of a storage of {len}"
            )));
        }
    }
    Ok((rs as isize, cs as isize))
}

/// [`product`] on the elements themselves, for a kernel that already holds typed slices.
pub(crate) fn product_of<T: Real>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    (m, n, k): (usize, usize, usize),
) -> candle_core::Result<Vec<T>> {
    let (a_rs, a_cs) = strides("first", la, (m, k), a.len())?;
    let (b_rs, b_cs) = strides("second", lb, (k, n), b.len())?;
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let len = m * n;
    let mut out = Vec::<T>::with_capacity(len);
    let (a, b) = (
        &a[la.start_offset().min(a.len())..],
        &b[lb.start_offset().min(b.len())..],
    );
    // SAFETY: the operands' strides address elements inside their slices (checked above; with
    // `k == 0` nothing is read), and the output is the row-major (m, n) block of `len` elements,
    // all written by `strided_product` before `set_len`.
    unsafe {
        strided_product(
            (m, n, k),
            out.spare_capacity_mut().as_mut_ptr().cast::<T>(),
            n,
            (a.as_ptr(), a_rs, a_cs),
            (b.as_ptr(), b_rs, b_cs),
            T::one(),
            parallelism,
        );
        out.set_len(len);
    }
    Ok(out)
}

/// `dst = scale * a b` for an `(m, k)` operand `a` and a `(k, n)` operand `b` given as (pointer,
/// row stride, column stride), into the `(m, n)` block at `dst` whose rows lie `dst_row_stride`
/// elements apart (columns adjacent). `gemm` writes every element of the block without reading it
/// (`read_dst = false`; zeros when `k == 0`): candle's call, with the product's weight `scale`.
///
/// # Safety
/// Every element the strides address must lie inside the operands' allocations, and the block at
/// `dst` inside its own, not overlapping the operands; no other thread may touch the block.
pub(crate) unsafe fn strided_product<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_row_stride: usize,
    (a, a_rs, a_cs): (*const T, isize, isize),
    (b, b_rs, b_cs): (*const T, isize, isize),
    scale: T,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract; alpha 0 is the old output's weight (unread), beta `scale` the
    // product's, no conjugation.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            false,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            T::zero(),
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

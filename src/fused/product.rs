//! The matrix product under the fused ops: candle's CPU product without its zero fill, split over the
//! pool by rows or columns.
//!
//! candle's CPU matmul allocates its output as `vec![0; m * n]` and then asks `gemm` to overwrite
//! it (`read_dst = false`: `gemm` writes `dst = lhs rhs` without reading `dst`). The fill is a full
//! pass over the output that nothing reads: in a profile of the MLP's plain step (one thread, the
//! side-by-side bench) it took 5.8% of the step, more than the zero fills of candle's backprop.
//! [`product`] makes the same `gemm` call, with the same strides, into memory that is not filled
//! first.
//!
//! With more than one thread, candle hands `gemm` the pool (`Parallelism::Rayon`), and `gemm`
//! shares its packing between the threads. [`product_of`] instead cuts the output into one block
//! of rows or of columns per thread and runs a single-threaded `gemm` call on each: every thread
//! packs its own operands and no thread waits for another inside the product. On two cores the
//! MLP's `256 x 512 x 512` products took 0.88 (`x W`), 1.10 (`x W^T`) and 1.13 ms (`a^T b`) split
//! this way against 1.00, 1.36 and 1.32 ms with `gemm`'s threads, and the MLP's and CNN's steps
//! 0.88-0.95x their time (`data/results/bench/product-split-ab.txt`).
//! A product is only cut where every block goes to the `gemm` kernel the whole would, with the
//! same blocking of the inner dimension ([`same_kernel`]), so each element sums its terms in the
//! same order: the values are candle's bit for bit at any thread count (tests compare them).
//! `fused::linear`'s three products and `fused::conv2d`'s run on it; `fused::attention`'s per-head
//! products call [`strided_product`] directly, one single-threaded call per (sequence, head) pair,
//! the pairs split over the pool.
//! Book: "Fused operations and speed", sections "A new machine" and "More than one core".

use super::kernel::Real;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};
use rayon::prelude::*;

/// The multiply-adds of one product (or one op's products) below which it stays on the calling
/// thread: at 2^18 (a quarter of a millisecond on one core) a task's cost is small beside the work.
/// A first choice, like [`super::kernel::GRAIN`], not a tuned one.
pub(crate) const PARALLEL_MULTIPLY_ADDS: usize = 1 << 18;

/// The unit, in rows or columns, in which blocks are shared out: a task gets at least one.
const SPLIT_ALIGN: usize = 16;

/// A raw pointer that may cross to the pool's threads: each task writes its own block.
#[derive(Clone, Copy)]
pub(crate) struct DisjointWrites<T>(pub(crate) *mut T);
// SAFETY: the tasks write disjoint blocks of one allocation that outlives them (at each use).
unsafe impl<T: Send> Send for DisjointWrites<T> {}
unsafe impl<T: Send> Sync for DisjointWrites<T> {}

impl<T> DisjointWrites<T> {
    /// The element `offset` places on (a method, so closures capture the wrapper, not the pointer).
    ///
    /// # Safety
    /// `offset` must lie inside the allocation.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut T {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

/// An operand that may cross to the pool's threads: the tasks only read it.
#[derive(Clone, Copy)]
struct SharedReads<T>(*const T);
// SAFETY: read-only access to an allocation that outlives the tasks (see `product_of`).
unsafe impl<T: Sync> Send for SharedReads<T> {}
unsafe impl<T: Sync> Sync for SharedReads<T> {}

impl<T> SharedReads<T> {
    /// The element `offset` elements on.
    ///
    /// # Safety
    /// `offset` must lie inside the allocation.
    unsafe fn at(self, offset: isize) -> *const T {
        // SAFETY: the caller's contract.
        unsafe { self.0.offset(offset) }
    }
}

/// Which dimension of the output the threads should share out first, from the operands' layouts:
/// measured on two cores (`data/results/bench/product-split-ab.txt`), a transposed first operand
/// (`a^T b`, weight gradients) splits best by rows, a transposed second one (`x W^T`) by columns
/// unless the rows are twice as many, and two row-major operands by the longer side. On the 24
/// shapes and layouts measured this picked the faster split 20 times, and was within 10% of it
/// the other four; [`plan`] takes the other side where this one would change `gemm`'s kernel.
fn prefer_rows((m, n, k): (usize, usize, usize), a_cs: isize, b_cs: isize) -> bool {
    let a_transposed = a_cs != 1 && k > 1;
    let b_transposed = b_cs != 1 && n > 1;
    match (a_transposed, b_transposed) {
        (true, _) => true,
        (false, true) => m >= 2 * n,
        (false, false) => m > n,
    }
}

/// The blocks `(start, len)` of a dimension of `extent` for up to `tasks` tasks: whole units of
/// [`SPLIT_ALIGN`] shared out evenly, the remainder to the last block; one block when the
/// dimension is shorter than two units.
fn blocks(extent: usize, tasks: usize) -> Vec<(usize, usize)> {
    let units = extent / SPLIT_ALIGN;
    let tasks = tasks.min(units).max(1);
    let bound = |i: usize| match i == tasks {
        true => extent,
        false => units * i / tasks * SPLIT_ALIGN,
    };
    (0..tasks)
        .map(|i| (bound(i), bound(i + 1) - bound(i)))
        .collect()
}

/// Whether `gemm` computes an `(mb, nb)` block of an `(m, n)` product with inner size `k` the way
/// it computes the whole, so each element sums its terms in the same order. `gemm` 0.19
/// (`gemm_common::gemm::gemm_basic_generic`) sends a block with a side of 1 to its vector-product
/// kernels, one of at most 256 elements to its horizontal kernel (inner blocks of 1024), and one
/// with both sides at most 64 to its small path, whose inner blocks are `min(k, 512)` elements
/// where the general path's are `k / ceil(k / K)` for a `K` of at least 512 from the cache sizes.
/// For `k <= 512` both paths sum the `k` terms in one block.
fn same_kernel((mb, nb): (usize, usize), (m, n, k): (usize, usize, usize)) -> bool {
    let small = |rows: usize, cols: usize| rows <= 64 && cols <= 64;
    mb >= 2 && nb >= 2 && mb * nb > 256 && (k <= 512 || small(mb, nb) == small(m, n))
}

/// How [`product_of`] shares an `(m, n)` output over `threads`: by rows (`true`) or by columns,
/// and the blocks. The preferred side first, the other if the preferred one cannot be shared
/// without changing `gemm`'s kernel ([`same_kernel`]); one block for small products and one thread.
fn plan(
    (m, n, k): (usize, usize, usize),
    (a_cs, b_cs): (isize, isize),
    threads: usize,
) -> (bool, Vec<(usize, usize)>) {
    let rows = prefer_rows((m, n, k), a_cs, b_cs);
    let work = m.saturating_mul(n).saturating_mul(k);
    if threads > 1 && work >= PARALLEL_MULTIPLY_ADDS {
        for by_rows in [rows, !rows] {
            let parts = blocks(if by_rows { m } else { n }, threads);
            let block = |len: usize| if by_rows { (len, n) } else { (m, len) };
            if parts.len() > 1
                && parts
                    .iter()
                    .all(|&(_, len)| same_kernel(block(len), (m, n, k)))
            {
                return (by_rows, parts);
            }
        }
    }
    (rows, vec![(0, if rows { m } else { n })])
}

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
    let len = m * n;
    let mut out = Vec::<T>::with_capacity(len);
    let (a, b) = (
        &a[la.start_offset().min(a.len())..],
        &b[lb.start_offset().min(b.len())..],
    );
    let (rows, parts) = plan((m, n, k), (a_cs, b_cs), rayon::current_num_threads());
    let dst = DisjointWrites(out.spare_capacity_mut().as_mut_ptr().cast::<T>());
    let (a_at, b_at) = (SharedReads(a.as_ptr()), SharedReads(b.as_ptr()));
    let one_block = |&(start, extent): &(usize, usize)| {
        // SAFETY: the operands' strides address elements inside their slices (checked above; with
        // `k == 0` nothing is read); a block of rows `start..start + extent` starts `start` rows
        // into `a` and the output, a block of columns `start` columns into `b` and the output, and
        // the blocks are disjoint and together cover the row-major `(m, n)` output, every element
        // of which `strided_product` writes (before `set_len` below).
        unsafe {
            let (size, dst, a, b) = match rows {
                true => (
                    (extent, n, k),
                    dst.at(start * n),
                    a_at.at(start as isize * a_rs),
                    b_at.at(0),
                ),
                false => (
                    (m, extent, k),
                    dst.at(start),
                    a_at.at(0),
                    b_at.at(start as isize * b_cs),
                ),
            };
            strided_product(
                size,
                dst,
                n,
                (a, a_rs, a_cs),
                (b, b_rs, b_cs),
                T::one(),
                gemm::Parallelism::None,
            );
        }
    };
    match parts.len() {
        1 => one_block(&parts[0]),
        _ => parts.par_iter().for_each(one_block),
    }
    // SAFETY: every element was written by the blocks above.
    unsafe { out.set_len(len) };
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

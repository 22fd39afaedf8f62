//! What the fused ops share: a float trait over f32 and f64, contiguous access to CPU storage, and
//! row-wise loops over the last dimension.

use candle_core::backend::BackendStorage;
use candle_core::cpu::erf::{erf_f32, erf_f64};
use candle_core::{CpuStorage, Layout, Tensor};
use num_traits::Float;

/// f32 or f64, with the constants and special functions the kernels need.
pub(crate) trait Real: Float + Send + Sync + 'static {
    fn erf(self) -> Self;
    fn constant(value: f64) -> Self;
}

impl Real for f32 {
    fn erf(self) -> Self {
        erf_f32(self)
    }
    fn constant(value: f64) -> Self {
        value as f32
    }
}

impl Real for f64 {
    fn erf(self) -> Self {
        erf_f64(self)
    }
    fn constant(value: f64) -> Self {
        value
    }
}

/// The contiguous elements of one CPU tensor.
pub(crate) enum Data<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// The elements of `storage` under `layout`, which must be contiguous (the public functions make
/// their inputs so) and f32 or f64.
pub(crate) fn data<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Data<'a>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg(format!(
            "{op}: the input must be contiguous (the public function makes it so)"
        )));
    };
    match storage {
        CpuStorage::F32(v) => Ok(Data::F32(&v[start..end])),
        CpuStorage::F64(v) => Ok(Data::F64(&v[start..end])),
        other => Err(candle_core::Error::Msg(format!(
            "{op}: f32 or f64 only, got {:?}; convert with to_dtype first",
            other.dtype()
        ))),
    }
}

/// Runs a generic kernel `$kernel(values, extra...)` on one f32 or f64 input.
macro_rules! dispatch1 {
    ($op:expr, $s:expr, $l:expr, $kernel:ident $(, $arg:expr)*) => {
        match $crate::fused::kernel::data($op, $s, $l)? {
            $crate::fused::kernel::Data::F32(v) => candle_core::CpuStorage::F32($kernel(v $(, $arg)*)),
            $crate::fused::kernel::Data::F64(v) => candle_core::CpuStorage::F64($kernel(v $(, $arg)*)),
        }
    };
}

/// Runs a generic kernel `$kernel(a, b, extra...)` on two inputs of the same dtype and shape.
macro_rules! dispatch2 {
    ($op:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, $kernel:ident $(, $arg:expr)*) => {{
        if $l1.shape() != $l2.shape() {
            return Err(candle_core::Error::Msg(format!(
                "{}: the two inputs have shapes {:?} and {:?}",
                $op,
                $l1.dims(),
                $l2.dims()
            )));
        }
        match (
            $crate::fused::kernel::data($op, $s1, $l1)?,
            $crate::fused::kernel::data($op, $s2, $l2)?,
        ) {
            ($crate::fused::kernel::Data::F32(a), $crate::fused::kernel::Data::F32(b)) => {
                candle_core::CpuStorage::F32($kernel(a, b $(, $arg)*))
            }
            ($crate::fused::kernel::Data::F64(a), $crate::fused::kernel::Data::F64(b)) => {
                candle_core::CpuStorage::F64($kernel(a, b $(, $arg)*))
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "{}: the two inputs have different dtypes",
                    $op
                )))
            }
        }
    }};
}

pub(crate) use {dispatch1, dispatch2};

/// Applies `f` to every element.
pub(crate) fn map<T: Real>(v: &[T], f: impl Fn(T) -> T) -> Vec<T> {
    v.iter().map(|&x| f(x)).collect()
}

/// Applies `f(row, out)` to every row of length `n` (the last dimension).
pub(crate) fn rows<T: Real>(v: &[T], n: usize, f: impl Fn(&[T], &mut [T])) -> Vec<T> {
    let mut out = vec![T::zero(); v.len()];
    for (row, out) in v.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        f(row, out);
    }
    out
}

/// Applies `f(a_row, b_row, out)` to every pair of rows of length `n`.
pub(crate) fn rows2<T: Real>(
    a: &[T],
    b: &[T],
    n: usize,
    f: impl Fn(&[T], &[T], &mut [T]),
) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    for ((a, b), out) in a
        .chunks_exact(n)
        .zip(b.chunks_exact(n))
        .zip(out.chunks_exact_mut(n))
    {
        f(a, b, out);
    }
    out
}

/// The length of the last dimension (the rows' length) of a layout.
pub(crate) fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// Checks a public function's input: CPU-side dtype f32 or f64 and at least one dimension.
pub(crate) fn check_input(name: &'static str, x: &Tensor) -> crate::Result<()> {
    if !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return Err(crate::Error::InvalidArgument {
            name,
            reason: format!("dtype {:?}; the fused ops take f32 or f64", x.dtype()),
            fix: "convert with to_dtype(DType::F32) or to_dtype(DType::F64)".into(),
        });
    }
    if x.rank() == 0 || x.elem_count() == 0 {
        return Err(crate::Error::InvalidArgument {
            name,
            reason: format!("shape {:?} has no last dimension to work over", x.dims()),
            fix: "pass a tensor with at least one element and one dimension".into(),
        });
    }
    Ok(())
}

//! What the fused ops share: a float trait over f32 and f64, contiguous access to CPU storage, and
//! row-wise loops over the last dimension.

use candle_core::backend::BackendStorage;
use candle_core::cpu::erf::erf_f64;
use candle_core::{CpuStorage, Layout, Tensor};
use num_traits::Float;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// f32 or f64, with the constants and special functions the kernels need.
///
/// f64 uses exact library functions (the equivalence checks run in f64). f32 uses branch-free
/// polynomial forms that the compiler vectorises: [`erf_f32`] (absolute error below 5e-7) and
/// [`exp_f32`] (relative error below 2e-7); `tests/suite/fused.rs` measures both.
pub(crate) trait Real: Float + Send + Sync + 'static {
    fn erf(self) -> Self;
    fn exp_fast(self) -> Self;
    fn constant(value: f64) -> Self;
    /// The elements of `storage`, or an error if it holds another dtype.
    fn slice(storage: &CpuStorage) -> candle_core::Result<&[Self]>;
}

fn wrong_dtype(storage: &CpuStorage, expected: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "expected {expected} storage, got {:?}; give every argument the same dtype",
        storage.dtype()
    ))
}

impl Real for f32 {
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn constant(value: f64) -> Self {
        value as f32
    }
    fn slice(storage: &CpuStorage) -> candle_core::Result<&[Self]> {
        match storage {
            CpuStorage::F32(v) => Ok(v),
            other => Err(wrong_dtype(other, "f32")),
        }
    }
}

impl Real for f64 {
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f64(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn constant(value: f64) -> Self {
        value
    }
    fn slice(storage: &CpuStorage) -> candle_core::Result<&[Self]> {
        match storage {
            CpuStorage::F64(v) => Ok(v),
            other => Err(wrong_dtype(other, "f64")),
        }
    }
}

/// erf in f32 as a rational function of odd and even polynomials on [-4, 4] (outside, erf is +-1 in
/// f32), the form XLA and Eigen use; no branches, so a loop over it vectorises.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ALPHA.iter().skip(1).fold(ALPHA[0], |p, &a| p * x2 + a);
    let q = BETA.iter().skip(1).fold(BETA[0], |q, &b| q * x2 + b);
    x * p / q
}

/// exp in f32: `2^n e^r` with `n` the nearest integer to `x / ln 2` and a degree-6 polynomial for
/// `e^r`, `|r| <= ln 2 / 2` (Cephes' coefficients); inputs are clamped to the normal range. No
/// branches, so a loop over it vectorises.
///
/// Below [`EXP_F32_ZERO_BELOW`] it returns exactly 0, never a tiny or subnormal number: a masked
/// attention score (`-1e4` added to a padded key) must give a probability of 0. Clamped instead, it
/// gave f32's smallest normal, 1.2e-38, whose products in the next matrix product are subnormal; on
/// cores that take a slow microcode assist for each subnormal result (seen on a Xeon of the
/// Sapphire Rapids generation) that made the toy encoder's step 10 to 14 times slower.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let underflows = x < EXP_F32_ZERO_BELOW;
    let x = x.clamp(EXP_F32_ZERO_BELOW, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // n as an integer, read from the low bits of `shifted` (same binade as ROUND): `n as i32` is a
    // saturating cast, which compiles to a scalar conversion per lane and stops the vectorisation.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    let p = P.iter().skip(1).fold(P[0], |p, &c| p * r + c);
    let y = p * r * r + r + 1.0;
    let value = y * f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    // A select, not a branch: the loop still vectorises.
    if underflows { 0.0 } else { value }
}

/// The input below which [`exp_f32`] returns 0: `exp(-87.3) = 1.27e-38` is still a normal f32,
/// the next binade down is not.
pub const EXP_F32_ZERO_BELOW: f32 = -87.3;

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

/// Runs `body` compiled for AVX-512 where the CPU has it, else for AVX2 and FMA where it has those,
/// so that the loop it inlines vectorises; as plain code elsewhere.
#[inline(always)]
fn vectorised<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { with_avx512(body) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn with_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Elements per task of a parallel kernel. Below twice this a kernel stays on the calling thread:
/// a rayon task costs microseconds, the time to stream thousands of elements, so small tensors lose
/// more to scheduling than a second thread saves. 2^14 is a first choice, not a tuned one (book,
/// "Fused operations and speed", section "More than one core").
pub(crate) const GRAIN: usize = 1 << 14;

/// Whether `len` elements are worth splitting over the pool.
pub(crate) fn parallel(len: usize) -> bool {
    len >= 2 * GRAIN && rayon::current_num_threads() > 1
}

/// Fills a new vector of `len` elements chunk by chunk: `fill(start, out)` writes the elements
/// `start..start + out.len()`. The chunks run in parallel for a large `len`, each one compiled for
/// AVX-512 or AVX2 and FMA (a loop over a `collect` would not be: the iterator's fold is not inlined into
/// [`vectorised`], and ran scalar), into memory that is not zero-filled first.
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
unsafe fn filled<T: Real>(
    len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if parallel(len) {
        spare
            .par_chunks_mut(GRAIN)
            .enumerate()
            .for_each(|(i, chunk)| {
                vectorised(
                    #[inline(always)]
                    || fill(i * GRAIN, chunk),
                )
            });
    } else {
        vectorised(
            #[inline(always)]
            || fill(0, spare),
        );
    }
    // SAFETY: the chunks tile `0..len`, and `fill` wrote every element of each (the caller's promise).
    unsafe { out.set_len(len) };
    out
}

/// Applies `f` to every element, vectorised, in parallel chunks for a large `v`.
pub(crate) fn map<T: Real>(v: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    // SAFETY: the loop zips each chunk with as many inputs, so it writes every element.
    unsafe {
        filled(
            v.len(),
            #[inline(always)]
            |start, out| {
                let end = start + out.len();
                for (o, &x) in out.iter_mut().zip(&v[start..end]) {
                    o.write(f(x));
                }
            },
        )
    }
}

/// Applies `f(a, b)` to every pair of elements, vectorised, in parallel chunks for large inputs.
pub(crate) fn zip_map<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let n = a.len().min(b.len());
    // SAFETY: the loop zips each chunk with as many elements of `a` and `b`, so it writes every one.
    unsafe {
        filled(
            n,
            #[inline(always)]
            |start, out| {
                let end = start + out.len();
                for ((o, &a), &b) in out.iter_mut().zip(&a[start..end]).zip(&b[start..end]) {
                    o.write(f(a, b));
                }
            },
        )
    }
}

/// Rows of length `n` per parallel task: at least one, about [`GRAIN`] elements.
fn rows_per_task(n: usize) -> usize {
    (GRAIN / n.max(1)).max(1)
}

/// Fills a new, zero-filled vector of `len` elements in whole rows of `n`: `fill(start, out)` writes
/// the elements `start..start + out.len()`, a whole number of rows. The tasks run in parallel for a
/// large `len`, each compiled for the CPU's vector extensions like [`filled`].
fn filled_rows<T: Real>(len: usize, n: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    if parallel(len) {
        let chunk = rows_per_task(n) * n;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, out)| {
            vectorised(
                #[inline(always)]
                || fill(i * chunk, out),
            )
        });
    } else {
        vectorised(
            #[inline(always)]
            || fill(0, &mut out),
        );
    }
    out
}

/// Applies `f(row, out)` to every row of length `n` (the last dimension), whole rows per task.
pub(crate) fn rows<T: Real>(v: &[T], n: usize, f: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
    filled_rows(
        v.len(),
        n,
        #[inline(always)]
        |start, out| {
            let v = &v[start..start + out.len()];
            for (row, out) in v.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                f(row, out);
            }
        },
    )
}

/// Applies `f(a_row, b_row, out)` to every pair of rows of length `n`, whole rows per task.
pub(crate) fn rows2<T: Real>(
    a: &[T],
    b: &[T],
    n: usize,
    f: impl Fn(&[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    filled_rows(
        a.len().min(b.len()),
        n,
        #[inline(always)]
        |start, out| {
            let end = start + out.len();
            let rows = a[start..end]
                .chunks_exact(n)
                .zip(b[start..end].chunks_exact(n));
            for ((a, b), out) in rows.zip(out.chunks_exact_mut(n)) {
                f(a, b, out);
            }
        },
    )
}

/// The length of the last dimension (the rows' length) of a layout.
pub(crate) fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// The error of a bad argument `name` of a fused op: what is wrong, and how to mend it.
pub(crate) fn invalid(name: &'static str, reason: String, fix: String) -> crate::Error {
    crate::Error::InvalidArgument { name, reason, fix }
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

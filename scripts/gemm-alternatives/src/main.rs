//! The f32 products of the MLP's steps on three matrix-product crates, and the core's peak.
//!
//! Each layout as `fused::linear`'s products call `gemm` (row-major output): `x W^T` (the forward
//! pass; the weight is stored `(out, in)`), `x W` (input gradients) and `a^T b` (weight gradients),
//! 256 x 512 x 512. Eight operand sets are cycled, so that operands come from memory as in a step.
//! Rounds alternate the crates; medians over rounds. The peak is 16 independent chains of AVX-512
//! fused multiply-adds. One thread: run it under `taskset -c 0`.

use std::hint::black_box;
use std::time::Instant;

const SETS: usize = 8;
const PRODUCTS: usize = 24;
const ROUNDS: usize = 15;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// A product `(m, k) x (k, n)` with the operands' strides (row, column) in elements.
#[derive(Clone, Copy)]
struct Layout {
    name: &'static str,
    lhs: (isize, isize),
    rhs: (isize, isize),
}

#[derive(Clone, Copy, PartialEq)]
enum Crate {
    Gemm,
    Faer,
    PrivateGemm,
}

fn run(
    which: Crate,
    layout: Layout,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
) {
    let ((lrs, lcs), (rrs, rcs)) = (layout.lhs, layout.rhs);
    match which {
        // SAFETY: the operands hold (m, k) and (k, n) elements at these strides; out holds m * n.
        Crate::Gemm => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                lcs,
                lrs,
                b.as_ptr(),
                rcs,
                rrs,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        },
        Crate::Faer => {
            use faer::{Accum, MatMut, MatRef, Par};
            // SAFETY: as above.
            let (lhs, rhs, dst) = unsafe {
                (
                    MatRef::from_raw_parts(a.as_ptr(), m, k, lrs, lcs),
                    MatRef::from_raw_parts(b.as_ptr(), k, n, rrs, rcs),
                    MatMut::from_raw_parts_mut(out.as_mut_ptr(), m, n, n as isize, 1),
                )
            };
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
        }
        // SAFETY: as above; alpha is read through the pointer.
        Crate::PrivateGemm => unsafe {
            use private_gemm_x86 as p;
            let alpha = 1.0f32;
            p::gemm(
                p::DType::F32,
                p::IType::U64,
                p::InstrSet::Avx512,
                m,
                n,
                k,
                out.as_mut_ptr() as *mut (),
                n as isize,
                1,
                std::ptr::null(),
                std::ptr::null(),
                p::DstKind::Full,
                p::Accum::Replace,
                a.as_ptr() as *const (),
                lrs,
                lcs,
                false,
                std::ptr::null(),
                0,
                b.as_ptr() as *const (),
                rrs,
                rcs,
                false,
                &raw const alpha as *const (),
                1,
            )
        },
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Fused multiply-adds a second on one core: 16 independent chains of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(iterations: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 16];
    let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let mut total = _mm512_set1_ps(0.0);
    for a in acc {
        total = _mm512_add_ps(total, a);
    }
    _mm512_reduce_add_ps(total)
}

fn peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        let iterations = 20_000_000;
        let mut times = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            // SAFETY: avx512f is present.
            black_box(unsafe { fma_chains(black_box(iterations)) });
            times.push(t.elapsed().as_secs_f64());
        }
        return Some((iterations * 16 * 16 * 2) as f64 / median(times) / 1e9);
    }
    None
}

fn main() {
    let (m, n, k) = (256usize, 512usize, 512usize);
    let layouts = [
        // x (m, k) row-major; W (n, k) row-major read as W^T.
        Layout {
            name: "x W^T",
            lhs: (k as isize, 1),
            rhs: (1, k as isize),
        },
        // g (m, k) row-major; W (k, n) row-major.
        Layout {
            name: "x W  ",
            lhs: (k as isize, 1),
            rhs: (n as isize, 1),
        },
        // a (k, m) row-major read as a^T; b (k, n) row-major.
        Layout {
            name: "a^T b",
            lhs: (1, m as isize),
            rhs: (n as isize, 1),
        },
    ];
    let lhs: Vec<Vec<f32>> = (0..SETS).map(|s| random(m * k, 2 * s as u64 + 1)).collect();
    let rhs: Vec<Vec<f32>> = (0..SETS).map(|s| random(k * n, 2 * s as u64 + 2)).collect();
    let mut outs: Vec<Vec<f32>> = (0..SETS).map(|_| vec![0f32; m * n]).collect();
    let crates = [
        (Crate::Gemm, "gemm 0.19"),
        (Crate::Faer, "faer 0.24"),
        (Crate::PrivateGemm, "private-gemm-x86 0.1.22"),
    ];
    let flops = (2 * m * n * k) as f64;
    if let Some(peak) = peak() {
        println!("peak: {peak:.1} GFLOP/s (16 chains of AVX-512 fused multiply-adds, one core)");
    }
    for layout in layouts {
        // The three crates' results for set 0 agree to rounding (each sums in its own order).
        let mut reference = vec![0f32; m * n];
        run(
            Crate::Gemm,
            layout,
            (m, n, k),
            &lhs[0],
            &rhs[0],
            &mut reference,
        );
        for (which, name) in crates {
            let mut out = vec![0f32; m * n];
            run(which, layout, (m, n, k), &lhs[0], &rhs[0], &mut out);
            let worst = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-3,
                "{name} {}: differs from gemm by {worst}",
                layout.name
            );
        }
        let mut times = vec![vec![]; crates.len()];
        for round in 0..ROUNDS {
            for c in 0..crates.len() {
                let c = if round % 2 == 0 {
                    c
                } else {
                    crates.len() - 1 - c
                };
                let start = Instant::now();
                for p in 0..PRODUCTS {
                    let s = p % SETS;
                    run(
                        crates[c].0,
                        layout,
                        (m, n, k),
                        &lhs[s],
                        &rhs[s],
                        &mut outs[s],
                    );
                }
                times[c].push(start.elapsed().as_secs_f64() / PRODUCTS as f64);
            }
        }
        for (c, (_, name)) in crates.iter().enumerate() {
            let t = median(times[c].clone());
            println!(
                "{} {name:24}: {:.3} ms a product, {:.1} GFLOP/s",
                layout.name,
                t * 1e3,
                flops / t / 1e9
            );
        }
    }
}

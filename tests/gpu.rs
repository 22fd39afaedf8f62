//! The GPU suite: the core equivalences on every placement this build can reach (CPU always, CUDA
//! when built with `--features cuda` and a GPU is present), in f32 and f64, with each dtype's derived
//! range and tolerance (src/equivalence.rs, `Placement`), and the agreement of the same gradients
//! across placements. One test binary, so the CUDA build ships one copy of candle's kernels:
//! `scripts/build-gpu-suite.sh` builds it; `scripts/run-gpu-suite.sh` runs it on the GPU machine.
//! Tests named `gpu_` need a GPU and fail without one; on a machine without, run `-- --skip gpu_`.

use advtrain::equivalence::{
    Check, Placement, curvature_finite_difference_converges_on, fgm_matches_gradient_penalty_on,
    gradients_agree, hutchinson_is_unbiased_on, noise_matches_laplacian_on, step_norms,
};
use advtrain::laplacian::ProbeKind;
use advtrain::toy::Setup;
use candle_core::{DType, Device};

/// f32 against the f64 reference: each value is a few dozen f32 operations deep (unit roundoff
/// 6e-8; measured on the CPU: 6.1e-7). The sign step is discontinuous in the gradient: a gradient
/// entry within rounding of zero would flip and show as an error of order 1, failing the check. 1e-5.
const F32_AGREEMENT: f64 = 1e-5;
/// Two f64 computations of the same values in a different order (CPU and GPU kernels): 1e-10.
const F64_AGREEMENT: f64 = 1e-10;

fn report(checks: &[Check]) {
    for c in checks {
        println!(
            "{} | {} | {} | {} {:.4e} (expected {}) | {}",
            c.identity,
            c.left,
            c.right,
            c.measure,
            c.measured,
            c.expected,
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.identity.as_str())
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// The core equivalences at one placement.
fn suite(at: &Placement) -> Vec<Check> {
    let mut checks = Vec::new();
    for setup in Setup::ALL {
        for norm in step_norms(setup) {
            checks.push(fgm_matches_gradient_penalty_on(setup, norm, at).unwrap());
        }
    }
    checks.push(noise_matches_laplacian_on(at).unwrap());
    for kind in [ProbeKind::Rademacher, ProbeKind::Gaussian] {
        checks.push(hutchinson_is_unbiased_on(kind, 2000, at).unwrap());
    }
    if at.dtype == DType::F64 {
        checks.push(curvature_finite_difference_converges_on(at).unwrap());
    }
    checks
}

#[test]
fn cpu_f32_suite() {
    report(&suite(&Placement::new(&Device::Cpu, DType::F32)));
}

#[test]
fn cpu_f32_agrees_with_cpu_f64() {
    let f32 = Placement::new(&Device::Cpu, DType::F32);
    report(&[gradients_agree(&Placement::cpu_f64(), &f32, F32_AGREEMENT).unwrap()]);
}

/// Creating a CUDA device never panics: with a GPU it is a device, without one (the build machine
/// runs this binary against a stub driver) an error that says why.
#[cfg(feature = "cuda")]
#[test]
fn a_cuda_device_is_a_device_or_an_error_never_a_panic() {
    let created = std::panic::catch_unwind(|| Device::new_cuda(0).map(|_| ()));
    match created {
        Ok(Ok(())) => println!("CUDA device 0 opened"),
        Ok(Err(e)) => println!("no CUDA device, as an error: {e}"),
        Err(_) => panic!("Device::new_cuda(0) panicked"),
    }
    let (_, description) = advtrain::device::select();
    println!("device::select: {description}");
}

#[cfg(feature = "cuda")]
fn gpu(dtype: DType) -> Placement {
    let device = Device::new_cuda(0)
        .unwrap_or_else(|e| panic!("the gpu_ tests need a CUDA device: {e}; run with --skip gpu_"));
    Placement::new(&device, dtype)
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_f32_suite() {
    report(&suite(&gpu(DType::F32)));
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_f64_suite() {
    report(&suite(&gpu(DType::F64)));
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_agrees_with_the_cpu() {
    let reference = Placement::cpu_f64();
    report(&[
        gradients_agree(&reference, &gpu(DType::F64), F64_AGREEMENT).unwrap(),
        gradients_agree(&reference, &gpu(DType::F32), F32_AGREEMENT).unwrap(),
    ]);
}

/// On the CPU as well, so that the constant is used and its f64 claim is checked where it can be:
/// the same f64 computation twice agrees exactly.
#[test]
fn cpu_f64_agrees_with_itself() {
    let reference = Placement::cpu_f64();
    report(&[gradients_agree(&reference, &reference, F64_AGREEMENT).unwrap()]);
}

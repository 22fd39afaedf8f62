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

/// Taylor mode's curvature against double backward on `device`, f64, for the toy MLP (tanh), the
/// CNN (the fused convolution, candle's `conv2d` off the CPU) and a small BERT classifier (the GELU
/// rules' composite form off the CPU): the relative differences.
fn taylor_against_double_backward(device: &Device) -> Vec<(&'static str, f64)> {
    use advtrain::laplacian::{self, CurvatureMethod};
    use advtrain::models::{BertClassifier, BertConfig, Cnn, Head, Pooling};
    use advtrain::toy::{Activation, Mlp};
    use advtrain::{Jet, Rng, Target, fused};
    use candle_core::Tensor;
    let f64_scalar = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let compare = |target: &Target,
                   loss: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
                   jet: &dyn Fn(&Jet) -> candle_core::Result<Jet>| {
        let v = ProbeKind::Rademacher
            .sample(target, &mut Rng::new(3))
            .unwrap();
        let exact = f64_scalar(
            laplacian::curvature(target, loss, &v, CurvatureMethod::DoubleBackward).unwrap(),
        );
        let taylor = f64_scalar(laplacian::jet_curvature(target, jet, &v).unwrap());
        (taylor - exact).abs() / exact.abs()
    };
    let mut rng = Rng::new(1);
    let mlp = Mlp::new(&[6, 16, 4], Activation::Tanh, 2, DType::F64, device).unwrap();
    let x = rng.normal((8, 6), DType::F64, device).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2, 3], device).unwrap();
    let cnn = Cnn::new(1, 10, DType::F64, device).unwrap();
    let pixels = rng.uniform(0.0, 1.0, (2, 784), DType::F64, device).unwrap();
    let digits = Tensor::new(&[3u32, 8], device).unwrap();
    let config = BertConfig {
        hidden_size: 8,
        num_attention_heads: 2,
        intermediate_size: 12,
        ..BertConfig::small(30, 10)
    };
    let head = Head {
        classes: 3,
        pooling: Pooling::Mean,
    };
    let bert = BertClassifier::new(config, head, 3, DType::F64, device).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 9, 2], [1, 7, 2, 0]], device).unwrap();
    let mask = Tensor::new(&[[1f64, 1., 1., 1.], [1., 1., 1., 0.]], device).unwrap();
    let labels = Tensor::new(&[2u32, 0], device).unwrap();
    let e = bert.embed(&ids).unwrap();
    vec![
        (
            "toy MLP",
            compare(&Target::input(&x).unwrap(), &|x| mlp.loss(x, &y), &|x| {
                mlp.loss_jet(x, &y)
            }),
        ),
        (
            "CNN",
            compare(
                &Target::input(&pixels).unwrap(),
                &|x| fused::cross_entropy(&cnn.logits(x)?, &digits),
                &|x| cnn.logits_jet(x)?.cross_entropy(&digits),
            ),
        ),
        (
            "BERT",
            compare(
                &Target::embedding_output(&e, Some(&mask)).unwrap(),
                &|e| fused::cross_entropy(&bert.logits_from_embeddings(e, &mask)?, &labels),
                &|e| {
                    bert.logits_from_embeddings_jet(e, &mask)?
                        .cross_entropy(&labels)
                },
            ),
        ),
    ]
}

fn assert_taylor_agrees(device: &Device) {
    for (model, relative) in taylor_against_double_backward(device) {
        println!("Taylor mode = double backward | {model} | relative difference {relative:.2e}");
        assert!(relative < F64_AGREEMENT, "{model}: {relative:e}");
    }
}

#[test]
fn cpu_taylor_mode_matches_double_backward() {
    assert_taylor_agrees(&Device::Cpu);
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_taylor_mode_matches_double_backward() {
    assert_taylor_agrees(&Device::new_cuda(0).unwrap());
}

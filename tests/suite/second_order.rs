//! The second-order guard (src/second_order.rs). `.cargo/config.toml` turns second order on for this
//! crate's tests, so the "off" case runs in a child process started without the variable.

use advtrain::Method;
use advtrain::laplacian::{self, CurvatureMethod, ProbeKind};
use advtrain::second_order::{self, ENV_VAR};
use advtrain::toy::{Activation, Mlp, Setup, problem};
use advtrain::{
    Batch, Divergence, Error, Fgm, GradientPenalty, Jet, Laplacian, PenaltyMethod, Rng, Target,
    TargetShift,
};
use candle_core::{DType, Device, Tensor};
use std::process::Command;

const CHILD_MARKER: &str = "second-order-off child ran";

#[test]
fn second_order_is_on_under_cargo_test() {
    assert!(second_order::is_enabled());
    assert!(second_order::require("a test").is_ok());
}

#[test]
fn methods_refuse_to_run_with_second_order_off() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "second_order::child_with_second_order_off",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove(ENV_VAR)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child failed:\n{text}");
    assert!(
        text.contains(CHILD_MARKER),
        "child did not run its checks:\n{text}"
    );
}

#[test]
#[ignore = "run by methods_refuse_to_run_with_second_order_off in a process without the variable"]
fn child_with_second_order_off() {
    if std::env::var_os(ENV_VAR).is_some() {
        return; // started by hand with the variable set: nothing to check here
    }
    assert!(!second_order::is_enabled());
    let p = problem(Setup::MlpInput, 1).unwrap();
    let is_guard = |e: Error| {
        let text = e.to_string();
        assert!(text.contains("CANDLE_GRAD_DO_NOT_DETACH=1"), "{text}");
        matches!(e, Error::SecondOrderDisabled { .. })
    };
    // Everything that differentiates a gradient refuses, naming the fix.
    assert!(is_guard(
        GradientPenalty::new(0.1)
            .unwrap()
            .step(&p.batch(), &mut Rng::new(0))
            .err()
            .unwrap()
    ));
    let v = ProbeKind::Rademacher
        .sample(&p.target, &mut Rng::new(0))
        .unwrap();
    assert!(is_guard(
        laplacian::hessian_vector_product(&p.target, &p.loss, &v)
            .err()
            .unwrap()
    ));
    assert!(is_guard(
        laplacian::curvature(&p.target, &p.loss, &v, CurvatureMethod::DoubleBackward)
            .err()
            .unwrap()
    ));
    assert!(is_guard(
        Laplacian::new(0.1)
            .unwrap()
            .step(&p.batch(), &mut Rng::new(0))
            .err()
            .unwrap()
    ));
    assert!(is_guard(
        laplacian::hessian_trace(&p.target, &p.loss).err().unwrap()
    ));
    let outputs = |x: &candle_core::Tensor| x.tanh();
    assert!(is_guard(
        TargetShift::new(0.1, Divergence::SquaredError)
            .unwrap()
            .regulariser(&p.target, &outputs, &mut Rng::new(0))
            .err()
            .unwrap()
    ));
    // First-order methods and the finite-difference forms still work.
    Fgm::new(0.1)
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    GradientPenalty::new(0.1)
        .unwrap()
        .with_method(PenaltyMethod::FiniteDifference { h: 1e-4 })
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    Laplacian::new(0.1)
        .unwrap()
        .with_method(CurvatureMethod::FiniteDifference { h: 1e-2 })
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    // Taylor mode differentiates no gradient: exact curvature with second order off.
    let model = Mlp::new(
        &[6, 16, 16, 4],
        Activation::Tanh,
        1,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    let mut rng = Rng::new(2);
    let x = rng.normal((8, 6), DType::F64, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2, 3], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let (loss, jet) = (
        |x: &Tensor| model.loss(x, &labels),
        |x: &Jet| model.loss_jet(x, &labels),
    );
    let step = |method| {
        Laplacian::new(0.5)
            .unwrap()
            .with_method(method)
            .unwrap()
            .step(&Batch::new(&target, &loss).with_jet(&jet), &mut Rng::new(3))
            .unwrap()
    };
    // The set-up check compares value and slope, and says it could not compare the curvature.
    let check = laplacian::check_jet(&target, &loss, &jet, &mut Rng::new(4)).unwrap();
    assert!(check.value < 1e-14 && check.slope < 1e-12 && check.curvature.is_none());
    // And it is right: the same step by second differences approaches it at order 2 in h.
    let taylor = step(CurvatureMethod::Taylor);
    let steps = [4e-3, 2e-3, 1e-3];
    let errors: Vec<f64> = steps
        .iter()
        .map(|&h| {
            let differences = step(CurvatureMethod::FiniteDifference { h });
            let vars = model.vars();
            let (a, b): (Vec<_>, Vec<_>) = vars
                .iter()
                .map(|v| {
                    let grad = |s: &advtrain::Step| {
                        s.grads.get(v.as_tensor()).unwrap().flatten_all().unwrap()
                    };
                    (grad(&taylor), grad(&differences))
                })
                .unzip();
            let (a, b) = (Tensor::cat(&a, 0).unwrap(), Tensor::cat(&b, 0).unwrap());
            advtrain::verify::relative_error(&b, &a).unwrap()
        })
        .collect();
    let fit = advtrain::verify::fit_order(&steps, &errors).unwrap();
    assert!(
        (fit.slope - 2.0).abs() < 0.1,
        "order {} from {errors:?}",
        fit.slope
    );
    println!("{CHILD_MARKER}");
}

//! The Laplacian regulariser and Hutchinson estimator (src/laplacian.rs).

use advtrain::Method;
use advtrain::laplacian::{self, CurvatureMethod, ProbeKind};
use advtrain::toy::{Setup, problem};
use advtrain::verify::{relative_error, scalar, weight_gradcheck};
use advtrain::{Error, Laplacian, Rng, Target};
use candle_core::{DType, Device, Tensor};

fn quadratic() -> (Tensor, Tensor) {
    // L(x) = 1/2 x^T A x on a batch of one with A symmetric: the Hessian is A.
    let a = Tensor::new(
        &[[2.0f64, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 4.0]],
        &Device::Cpu,
    )
    .unwrap();
    let x = Tensor::new(&[[0.2f64, -0.4, 1.0]], &Device::Cpu).unwrap();
    (a, x)
}

#[test]
fn hessian_of_a_quadratic_is_its_matrix() {
    let (a, x) = quadratic();
    let loss = |x: &Tensor| (x.matmul(&a)? * x)?.sum_all()? * 0.5;
    let target = Target::input(&x).unwrap();
    let h = laplacian::hessian_matrix(&target, &loss).unwrap();
    assert!(relative_error(&h, &a).unwrap() < 1e-15);
    assert!((laplacian::hessian_trace(&target, &loss).unwrap() - 5.0).abs() < 1e-14);
    // Each Rademacher probe gives v^T A v; the second difference is exact for a quadratic.
    let v = Tensor::new(&[[1.0f64, -1.0, 1.0]], &Device::Cpu).unwrap();
    let exact = (2.0 - 1.0 + 4.0) - 2.0 * 0.5 - 2.0 * 0.3;
    for method in [
        CurvatureMethod::DoubleBackward,
        CurvatureMethod::FiniteDifference { h: 0.5 },
    ] {
        let q = scalar(&laplacian::curvature(&target, &loss, &v, method).unwrap()).unwrap();
        assert!((q - exact).abs() < 1e-13, "{method:?}: {q}");
    }
}

#[test]
fn masked_trace_and_probes_skip_padding() {
    let p = problem(Setup::EmbeddingOutput, 3).unwrap();
    let mut rng = Rng::new(1);
    let v = ProbeKind::Rademacher.sample(&p.target, &mut rng).unwrap();
    let masked = p.target.apply_mask(&v).unwrap();
    assert_eq!(
        v.to_vec3::<f64>().unwrap(),
        masked.to_vec3::<f64>().unwrap()
    );
    let exact = laplacian::hessian_trace(&p.target, &p.loss).unwrap();
    let est = laplacian::hutchinson(
        &p.target,
        &p.loss,
        ProbeKind::Rademacher,
        CurvatureMethod::DoubleBackward,
        1500,
        &mut rng,
    )
    .unwrap();
    assert!(
        ((est.mean - exact) / est.std_error).abs() < 3.0,
        "{} vs {exact}",
        est.mean
    );
}

/// `J(w) = L + sigma^2/2 v^T H v` for a fixed probe v, by central differences over weights.
fn check_trainable(method: CurvatureMethod, tolerance: f64) {
    let p = problem(Setup::MlpInput, 8).unwrap();
    let sigma = 0.7;
    let mut laplacian = Laplacian::new(sigma).unwrap().with_method(method).unwrap();
    let step = laplacian.step(&p.batch(), &mut Rng::new(4)).unwrap();
    let v = ProbeKind::Rademacher
        .sample(&p.target, &mut Rng::new(4))
        .unwrap();
    let objective = || -> advtrain::Result<f64> {
        let curvature = laplacian::curvature(&p.target, &p.loss, &v, method)?;
        Ok(scalar(&p.target.loss(&p.loss)?)? + sigma * sigma / 2.0 * scalar(&curvature)?)
    };
    let check = weight_gradcheck(&p.vars, &step.grads, objective, 5, 1e-5).unwrap();
    assert!(check.norm > 1e-3);
    let err = check.relative_error;
    assert!(err < tolerance, "{method:?}: relative error {err}");
}

#[test]
fn exact_regulariser_is_trainable_third_order() {
    check_trainable(CurvatureMethod::DoubleBackward, 1e-7);
}

#[test]
fn finite_difference_regulariser_is_trainable_first_order() {
    // The regulariser's own gradient is exact for any h; h = 0.1 keeps the checker's rounding error
    // (the objective carries 1/h^2, and the weight step is 1e-5) well below the tolerance.
    check_trainable(CurvatureMethod::FiniteDifference { h: 0.1 }, 1e-7);
}

#[test]
fn step_reports_objective_and_passes() {
    let p = problem(Setup::MlpInput, 8).unwrap();
    let step = Laplacian::new(0.5)
        .unwrap()
        .with_probes(3)
        .unwrap()
        .step(&p.batch(), &mut Rng::new(2))
        .unwrap();
    assert_eq!(
        (
            step.passes.forward,
            step.passes.backward,
            step.passes.double_backward
        ),
        (1, 5, 4)
    );
    assert!(scalar(&step.loss).unwrap() != scalar(&step.clean_loss).unwrap());
    let fd = Laplacian::new(0.5)
        .unwrap()
        .with_probes(3)
        .unwrap()
        .with_method(CurvatureMethod::FiniteDifference { h: 1e-2 })
        .unwrap()
        .step(&p.batch(), &mut Rng::new(2))
        .unwrap();
    assert_eq!((fd.passes.forward, fd.passes.double_backward), (7, 0));
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        Laplacian::new(-0.1),
        Err(Error::InvalidArgument { name: "sigma", .. })
    ));
    assert!(matches!(
        Laplacian::new(0.1).unwrap().with_probes(0),
        Err(Error::InvalidArgument { name: "probes", .. })
    ));
    assert!(matches!(
        Laplacian::new(0.1)
            .unwrap()
            .with_method(CurvatureMethod::FiniteDifference { h: -1.0 }),
        Err(Error::InvalidArgument { name: "h", .. })
    ));
    let p = problem(Setup::MlpInput, 8).unwrap();
    let wrong = Tensor::zeros((2, 2), DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(
        laplacian::curvature(&p.target, &p.loss, &wrong, CurvatureMethod::DoubleBackward),
        Err(Error::ShapeMismatch { name: "delta", .. })
    ));
    let big = Tensor::zeros((100, 50), DType::F64, &Device::Cpu).unwrap();
    let t = Target::input(&big).unwrap();
    let l = |x: &Tensor| x.sqr()?.sum_all();
    assert!(matches!(
        laplacian::hessian_trace(&t, &l),
        Err(Error::InvalidArgument { name: "target", .. })
    ));
    assert!(matches!(
        laplacian::hutchinson(
            &p.target,
            &p.loss,
            ProbeKind::Gaussian,
            CurvatureMethod::DoubleBackward,
            0,
            &mut Rng::new(0)
        ),
        Err(Error::InvalidArgument { name: "probes", .. })
    ));
}

#[test]
fn an_estimate_needs_two_finite_samples() {
    let p = problem(Setup::MlpInput, 1).unwrap();
    let Err(Error::InvalidArgument { name, .. }) = laplacian::hutchinson(
        &p.target,
        &p.loss,
        ProbeKind::Rademacher,
        CurvatureMethod::DoubleBackward,
        1,
        &mut Rng::new(0),
    ) else {
        panic!("one probe was accepted");
    };
    assert_eq!(name, "probes");
    let Err(Error::NonFinite { what }) =
        advtrain::estimate::Estimate::from_samples(vec![1.0, f64::NAN, 2.0])
    else {
        panic!("a NaN sample was averaged");
    };
    assert!(what.contains("1 of 3"), "{what}");
}

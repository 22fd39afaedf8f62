//! Gradient penalty (src/gradient_penalty.rs): its weight gradient against finite differences of the
//! penalised objective itself, independently of FGM.

use advtrain::toy::{Setup, problem};
use advtrain::verify::{flat_gradient, relative_error, scalar};
use advtrain::{Error, GradientPenalty, PenaltyMethod, Scope, StepNorm};
use candle_core::Tensor;

/// `J(w) = L + eps * P(dL/dx)` by central differences over `limit` entries spread over every var.
/// For the embedding-output setup the point is computed once from the matrix, so moving the matrix
/// cannot move the point: the matrix is left out there (the embedding-matrix setup covers it).
fn objective_gradient_by_finite_differences(
    p: &advtrain::toy::Problem,
    gp: &GradientPenalty,
    limit: usize,
) -> (Vec<f64>, Vec<f64>) {
    let objective = || -> f64 {
        let pg = p.target.loss_and_gradient(&p.loss).unwrap();
        scalar(&pg.loss).unwrap() + scalar(&gp.penalty(&p.target, &pg.gradient).unwrap()).unwrap()
    };
    let step = gp.step(&p.target, &p.loss).unwrap();
    let (mut autodiff, mut fd) = (Vec::new(), Vec::new());
    let h = 1e-5;
    let point_is_fixed_copy = p.target.kind() == advtrain::TargetKind::EmbeddingOutput;
    for var in &p.vars {
        if point_is_fixed_copy && var.dims() == [40, 8] {
            continue;
        }
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        let grad: Vec<f64> = step
            .grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let stride = (base.len() / limit).max(1);
        for i in (0..base.len()).step_by(stride).take(limit) {
            let set = |delta: f64| {
                let mut values = base.clone();
                values[i] += delta;
                var.set(&Tensor::from_vec(values, var.shape(), var.device()).unwrap())
                    .unwrap();
            };
            set(h);
            let plus = objective();
            set(-h);
            let minus = objective();
            set(0.0);
            fd.push((plus - minus) / (2.0 * h));
            autodiff.push(grad[i]);
        }
    }
    assert!(autodiff.iter().filter(|g| g.abs() > 1e-6).count() > autodiff.len() / 2);
    (autodiff, fd)
}

#[test]
fn weight_gradient_matches_finite_differences_of_the_penalised_objective() {
    for setup in [
        Setup::MlpInput,
        Setup::EmbeddingOutput,
        Setup::EmbeddingMatrix,
    ] {
        let scope = if setup == Setup::EmbeddingMatrix {
            Scope::PerBatch
        } else {
            Scope::PerExample
        };
        for norm in [StepNorm::Raw, StepNorm::L2(scope), StepNorm::Sign] {
            let p = problem(setup, 5).unwrap();
            let gp = GradientPenalty::new(0.3).unwrap().with_norm(norm);
            let (autodiff, fd) = objective_gradient_by_finite_differences(&p, &gp, 6);
            let a = Tensor::new(autodiff.as_slice(), &candle_core::Device::Cpu).unwrap();
            let b = Tensor::new(fd.as_slice(), &candle_core::Device::Cpu).unwrap();
            let err = relative_error(&a, &b).unwrap();
            assert!(err < 1e-7, "{setup:?} {norm:?}: relative error {err}");
        }
    }
}

#[test]
fn penalty_values() {
    let p = problem(Setup::MlpInput, 5).unwrap();
    let g = p.target.loss_and_gradient(&p.loss).unwrap().gradient;
    let sq = g
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let gp = GradientPenalty::new(0.4).unwrap();
    assert!((scalar(&gp.penalty(&p.target, &g).unwrap()).unwrap() - 0.2 * sq).abs() < 1e-15);
    let gp = gp.with_norm(StepNorm::L2(Scope::PerBatch));
    assert!((scalar(&gp.penalty(&p.target, &g).unwrap()).unwrap() - 0.4 * sq.sqrt()).abs() < 1e-15);
    let step = GradientPenalty::new(0.4)
        .unwrap()
        .step(&p.target, &p.loss)
        .unwrap();
    let expected = scalar(&step.clean_loss).unwrap() + 0.2 * sq;
    assert!((scalar(&step.loss).unwrap() - expected).abs() < 1e-14);
    assert_eq!(
        (
            step.passes.forward,
            step.passes.backward,
            step.passes.double_backward
        ),
        (1, 2, 1)
    );
}

#[test]
fn finite_difference_form_agrees_with_double_backward() {
    let p = problem(Setup::EmbeddingOutput, 6).unwrap();
    let exact = GradientPenalty::new(0.1)
        .unwrap()
        .step(&p.target, &p.loss)
        .unwrap();
    let fd = GradientPenalty::new(0.1)
        .unwrap()
        .with_method(PenaltyMethod::FiniteDifference { h: 1e-4 })
        .unwrap()
        .step(&p.target, &p.loss)
        .unwrap();
    let err = relative_error(
        &flat_gradient(&p.vars, &exact.grads).unwrap(),
        &flat_gradient(&p.vars, &fd.grads).unwrap(),
    )
    .unwrap();
    assert!(err < 1e-7, "{err}");
    assert!((scalar(&exact.loss).unwrap() - scalar(&fd.loss).unwrap()).abs() < 1e-14);
    assert_eq!(
        (
            fd.passes.forward,
            fd.passes.backward,
            fd.passes.double_backward
        ),
        (3, 3, 0)
    );
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        GradientPenalty::new(-1.0),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    assert!(matches!(
        GradientPenalty::new(f64::NAN),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    assert!(matches!(
        GradientPenalty::new(0.1)
            .unwrap()
            .with_method(PenaltyMethod::FiniteDifference { h: 0.0 }),
        Err(Error::InvalidArgument { name: "h", .. })
    ));
    let x = Tensor::new(&[[1.0f64, 2.0]], &candle_core::Device::Cpu).unwrap();
    let target = advtrain::Target::input(&x).unwrap();
    let cut = |x: &Tensor| x.detach().sum_all();
    assert!(matches!(
        GradientPenalty::new(0.1).unwrap().step(&target, &cut),
        Err(Error::NoGradient { .. })
    ));
}

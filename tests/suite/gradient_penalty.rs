//! Gradient penalty (src/gradient_penalty.rs): its weight gradient against finite differences of the
//! penalised objective itself, independently of FGM.

use advtrain::toy::{Setup, problem};
use advtrain::verify::{flat_gradient, relative_error, scalar, weight_gradcheck};
use advtrain::{Batch, Method, Rng};
use advtrain::{Error, GradientPenalty, PenaltyMethod, Scope, StepNorm};
use candle_core::Tensor;

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
            let mut gp = GradientPenalty::new(0.3).unwrap().with_norm(norm);
            let step = gp.step(&p.batch(), &mut Rng::new(0)).unwrap();
            // J(w) = L + eps * P(dL/dx), evaluated afresh at the moved weights.
            let objective = || -> advtrain::Result<f64> {
                let pg = p.target.loss_and_gradient(&p.loss)?;
                Ok(scalar(&pg.loss)? + scalar(&gp.penalty(&p.target, &pg.gradient)?)?)
            };
            // For the embedding-output setup the point was computed once from the matrix, so moving
            // the matrix cannot move it: the matrix is left out there (the matrix setup covers it).
            let vars: Vec<_> = p
                .vars
                .iter()
                .filter(|v| !(setup == Setup::EmbeddingOutput && v.dims() == [40, 8]))
                .cloned()
                .collect();
            let check = weight_gradcheck(&vars, &step.grads, objective, 6, 1e-5).unwrap();
            assert!(check.norm > 1e-3, "{setup:?} {norm:?}: nothing to compare");
            let err = check.relative_error;
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
        .step(&p.batch(), &mut Rng::new(0))
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
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    let fd = GradientPenalty::new(0.1)
        .unwrap()
        .with_method(PenaltyMethod::FiniteDifference { h: 1e-4 })
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
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
        GradientPenalty::new(0.1)
            .unwrap()
            .step(&Batch::new(&target, &cut), &mut Rng::new(0)),
        Err(Error::NoGradient { .. })
    ));
}

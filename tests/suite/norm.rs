//! Step geometry and its dual penalty (src/norm.rs).

use advtrain::toy::{Setup, problem};
use advtrain::verify::{l2_norm, relative_error};
use advtrain::{Error, Rng, Scope, StepNorm, Target};
use candle_core::{DType, Device, Tensor, Var};

#[test]
fn direction_is_the_gradient_of_the_penalty() {
    // d(g) = dP/dg: the duality that makes FGM equal gradient penalty to first order.
    for setup in [Setup::MlpInput, Setup::EmbeddingOutput] {
        let p = problem(setup, 2).unwrap();
        let g = p
            .target
            .loss_and_gradient(&p.loss)
            .unwrap()
            .gradient
            .detach();
        for norm in [
            StepNorm::Raw,
            StepNorm::L2(Scope::PerExample),
            StepNorm::L2(Scope::PerBatch),
            StepNorm::Sign,
        ] {
            let var = Var::from_tensor(&g).unwrap();
            let penalty = norm.penalty(&p.target, var.as_tensor()).unwrap();
            let dp = penalty
                .backward()
                .unwrap()
                .get(var.as_tensor())
                .unwrap()
                .clone();
            let dp = p.target.apply_mask(&dp).unwrap();
            let d = norm.direction(&p.target, &g).unwrap();
            assert!(
                relative_error(&d, &dp).unwrap() < 1e-12,
                "{setup:?} {norm:?}"
            );
        }
    }
}

#[test]
fn l2_directions_have_unit_norm_per_example_or_per_batch() {
    let p = problem(Setup::EmbeddingOutput, 2).unwrap();
    let g = p.target.loss_and_gradient(&p.loss).unwrap().gradient;
    let d = StepNorm::L2(Scope::PerExample)
        .direction(&p.target, &g)
        .unwrap();
    let norms: Vec<f64> = p
        .target
        .per_example_sum(&d.sqr().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for n in norms {
        assert!((n - 1.0).abs() < 1e-12, "per-sentence norm^2 {n}");
    }
    let d = StepNorm::L2(Scope::PerBatch)
        .direction(&p.target, &g)
        .unwrap();
    assert!((l2_norm(&d).unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn zero_gradient_gives_zero_direction_and_zero_penalty_gradient_not_nan() {
    let g = Tensor::zeros((3, 4), DType::F64, &Device::Cpu).unwrap();
    let target = Target::input(&g).unwrap();
    for norm in [
        StepNorm::Raw,
        StepNorm::L2(Scope::PerExample),
        StepNorm::L2(Scope::PerBatch),
        StepNorm::Sign,
    ] {
        let d = norm.direction(&target, &g).unwrap();
        let values: Vec<f64> = d.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| *v == 0.0), "{norm:?}: {values:?}");
        let var = Var::from_tensor(&g).unwrap();
        let p = norm.penalty(&target, var.as_tensor()).unwrap();
        assert_eq!(p.to_scalar::<f64>().unwrap(), 0.0);
        let dp: Vec<f64> = p
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            dp.iter().all(|v| v.is_finite() && *v == 0.0),
            "{norm:?}: {dp:?}"
        );
    }
}

#[test]
fn one_zero_example_keeps_the_others_normalised() {
    let g = Tensor::new(&[[0.0f64, 0.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let target = Target::input(&g).unwrap();
    let d: Vec<Vec<f64>> = StepNorm::L2(Scope::PerExample)
        .direction(&target, &g)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(d, vec![vec![0.0, 0.0], vec![0.6, 0.8]]);
    let p = StepNorm::L2(Scope::PerExample)
        .penalty(&target, &g)
        .unwrap();
    assert_eq!(p.to_scalar::<f64>().unwrap(), 5.0);
    assert_eq!(
        StepNorm::Sign
            .penalty(&target, &g)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        7.0
    );
    assert_eq!(
        StepNorm::Raw
            .penalty(&target, &g)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        12.5
    );
}

#[test]
fn per_example_norm_on_a_weight_is_an_error() {
    let w = Var::from_tensor(
        &Rng::new(1)
            .normal((4, 3), DType::F64, &Device::Cpu)
            .unwrap(),
    )
    .unwrap();
    let target = Target::weight(&w).unwrap();
    assert!(matches!(
        StepNorm::L2(Scope::PerExample).direction(&target, w.as_tensor()),
        Err(Error::InvalidArgument { name: "scope", .. })
    ));
    assert!(
        StepNorm::L2(Scope::PerBatch)
            .direction(&target, w.as_tensor())
            .is_ok()
    );
}

//! PGD-K (src/pgd.rs).

use advtrain::toy::{Setup, problem};
use advtrain::verify::{flat_gradient, relative_error, scalar};
use advtrain::{Batch, Method};
use advtrain::{Error, Fgm, Objective, Pgd, Rng, Scope, Start, StepNorm, Target};
use candle_core::{DType, Device, Tensor};

#[test]
fn iterates_never_leave_the_ball() {
    // Property test over random problems, starts and step sizes, both norms.
    let mut rng = Rng::new(3);
    for case in 0..12 {
        let setup = [Setup::MlpInput, Setup::EmbeddingOutput][case % 2];
        let p = problem(setup, case as u64).unwrap();
        let eps = rng.uniform_f64(0.01, 1.0);
        let alpha = eps * rng.uniform_f64(0.1, 3.0);
        for norm in [
            StepNorm::L2(Scope::PerExample),
            StepNorm::L2(Scope::PerBatch),
            StepNorm::Sign,
        ] {
            let start = if case % 3 == 0 {
                Start::Random
            } else {
                Start::Zero
            };
            let pgd = Pgd::new(eps, alpha, 4)
                .unwrap()
                .with_norm(norm)
                .with_start(start);
            let (delta, extra) = pgd.attack(&p.batch(), &mut rng).unwrap();
            assert_eq!(extra, if start == Start::Zero { 3 } else { 4 });
            let inside = match norm {
                StepNorm::Sign => {
                    delta
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                        <= eps
                }
                StepNorm::L2(scope) => advtrain::norm::squared_norms(&p.target, &delta, scope)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .all(|n| n.sqrt() <= eps * (1.0 + 1e-12)),
                StepNorm::Raw => unreachable!(),
            };
            assert!(inside, "case {case} {norm:?}");
        }
    }
}

#[test]
fn one_step_with_alpha_eps_from_zero_is_fgm() {
    for setup in [
        Setup::MlpInput,
        Setup::EmbeddingOutput,
        Setup::EmbeddingMatrix,
    ] {
        let p = problem(setup, 4).unwrap();
        let l2 = if setup == Setup::EmbeddingMatrix {
            Scope::PerBatch
        } else {
            Scope::PerExample
        };
        for norm in [StepNorm::L2(l2), StepNorm::Sign] {
            for objective in [Objective::AdversarialOnly, Objective::CleanPlusAdversarial] {
                let fgm = Fgm::new(0.2)
                    .unwrap()
                    .with_norm(norm)
                    .with_objective(objective)
                    .step(&p.batch(), &mut Rng::new(0))
                    .unwrap();
                let pgd = Pgd::new(0.2, 0.2, 1)
                    .unwrap()
                    .with_norm(norm)
                    .with_objective(objective)
                    .step(&p.batch(), &mut Rng::new(0))
                    .unwrap();
                let err = relative_error(
                    &flat_gradient(&p.vars, &fgm.grads).unwrap(),
                    &flat_gradient(&p.vars, &pgd.grads).unwrap(),
                )
                .unwrap();
                assert!(err < 1e-12, "{setup:?} {norm:?} {objective:?}: {err}");
                assert!((scalar(&fgm.loss).unwrap() - scalar(&pgd.loss).unwrap()).abs() < 1e-12);
                assert_eq!(fgm.passes, pgd.passes);
            }
        }
    }
}

#[test]
fn more_steps_find_a_higher_loss_on_a_convex_problem() {
    // Logistic loss of a linear model is convex in x: PGD ascent keeps raising it inside the ball.
    let mut rng = Rng::new(5);
    let w = rng.normal((3, 6), DType::F64, &Device::Cpu).unwrap();
    let x = rng.normal((10, 6), DType::F64, &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1, 2, 0], &Device::Cpu).unwrap();
    let loss = |x: &Tensor| candle_nn::loss::cross_entropy(&x.matmul(&w.t()?)?, &y);
    let target = Target::input(&x).unwrap();
    let at = |k: usize| {
        let mut pgd = Pgd::new(0.5, 0.2, k)
            .unwrap()
            .with_objective(Objective::AdversarialOnly);
        scalar(
            &pgd.step(&Batch::new(&target, &loss), &mut Rng::new(0))
                .unwrap()
                .loss,
        )
        .unwrap()
    };
    let (one, five) = (at(1), at(5));
    assert!(five >= one, "{five} < {one}");
    assert!(one > scalar(&target.loss(&loss).unwrap()).unwrap());
}

#[test]
fn costs_k_plus_one_passes() {
    let p = problem(Setup::MlpInput, 1).unwrap();
    let step = Pgd::new(0.1, 0.05, 3)
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    assert_eq!((step.passes.forward, step.passes.backward), (4, 4));
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        Pgd::new(0.1, 0.1, 0),
        Err(Error::InvalidArgument { name: "steps", .. })
    ));
    assert!(matches!(
        Pgd::new(0.1, 0.0, 1),
        Err(Error::InvalidArgument { name: "alpha", .. })
    ));
    assert!(matches!(
        Pgd::new(-0.1, 0.1, 1),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    assert!(matches!(
        Pgd::new(f64::NAN, 0.1, 1),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
}

#[test]
fn a_valid_range_keeps_the_attacked_point_inside_it_and_inside_the_ball() {
    // Pixels in [0, 1], many at the edges, as in MNIST.
    let x = advtrain::Rng::new(3)
        .uniform(-0.5, 1.5, (4, 30), DType::F64, &Device::Cpu)
        .unwrap()
        .clamp(0.0, 1.0)
        .unwrap();
    let w = advtrain::Rng::new(4)
        .normal((4, 30), DType::F64, &Device::Cpu)
        .unwrap();
    let loss = |x: &Tensor| (x * &w)?.sum_all()?.tanh();
    let target = Target::input(&x).unwrap();
    let batch = advtrain::Batch::new(&target, &loss);
    let eps = 0.3;
    let inside = |delta: &Tensor| {
        let p: Vec<f64> = (&x + delta)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        p.iter().all(|v| (0.0..=1.0).contains(v))
    };
    let largest = |delta: &Tensor| {
        delta
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let free = Pgd::new(eps, eps / 4.0, 5)
        .unwrap()
        .with_norm(StepNorm::Sign);
    let (unbounded, _) = free.attack(&batch, &mut advtrain::Rng::new(1)).unwrap();
    assert!(
        !inside(&unbounded),
        "the test needs points the attack pushes out"
    );
    let boxed = free.with_range(0.0, 1.0).unwrap();
    let (delta, _) = boxed.attack(&batch, &mut advtrain::Rng::new(1)).unwrap();
    assert!(inside(&delta) && largest(&delta) <= eps + 1e-12);
    // FGSM with the same range.
    let fgsm = Fgm::fgsm(eps).unwrap().with_range(0.0, 1.0).unwrap();
    let g = target.loss_and_gradient(&loss).unwrap().gradient;
    let step = fgsm.perturbation(&target, &g).unwrap();
    assert!(inside(&step) && largest(&step) <= eps + 1e-12);
    assert!(
        largest(&step) > 0.9 * eps,
        "entries away from the edges keep the full step"
    );
    assert!(Pgd::new(eps, 0.1, 1).unwrap().with_range(1.0, 0.0).is_err());
}

#[test]
fn a_config_with_an_empty_valid_range_is_refused() {
    let config = advtrain::PgdConfig {
        range: Some(advtrain::ValidRange {
            lo: 0.0,
            hi: f64::NAN,
        }),
        ..advtrain::PgdConfig::default()
    };
    let Err(Error::InvalidArgument { name, .. }) = Pgd::from_config(config) else {
        panic!("a NaN range was accepted");
    };
    assert_eq!(name, "range");
}

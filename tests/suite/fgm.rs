//! FGM / FGSM (src/fgm.rs).

use advtrain::toy::{Setup, problem};
use advtrain::verify::{flat_gradient, l2_norm, relative_error, scalar};
use advtrain::{Batch, Method, Rng};
use advtrain::{Error, Fgm, Objective, Scope, StepNorm, Target};
use candle_core::{DType, Device, Tensor};

#[test]
fn perturbation_has_the_requested_size_and_direction() {
    let p = problem(Setup::EmbeddingOutput, 1).unwrap();
    let g = p.target.loss_and_gradient(&p.loss).unwrap().gradient;
    let eps = 0.3;
    let batch = Fgm::new(eps).unwrap().perturbation(&p.target, &g).unwrap();
    assert!((l2_norm(&batch).unwrap() - eps).abs() < 1e-12);
    let per_example = Fgm::new(eps)
        .unwrap()
        .with_norm(StepNorm::L2(Scope::PerExample))
        .perturbation(&p.target, &g)
        .unwrap();
    let sizes: Vec<f64> = p
        .target
        .per_example_sum(&per_example.sqr().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        sizes.iter().all(|s| (s.sqrt() - eps).abs() < 1e-12),
        "{sizes:?}"
    );
    let raw = Fgm::new(eps)
        .unwrap()
        .with_norm(StepNorm::Raw)
        .perturbation(&p.target, &g)
        .unwrap();
    assert!(relative_error(&raw, &(&g * eps).unwrap()).unwrap() < 1e-15);
    let sign = Fgm::fgsm(eps).unwrap().perturbation(&p.target, &g).unwrap();
    let values: Vec<f64> = sign.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        values
            .iter()
            .all(|v| *v == 0.0 || (v.abs() - eps).abs() < 1e-15)
    );
}

#[test]
fn the_step_raises_the_loss() {
    for setup in [
        Setup::MlpInput,
        Setup::EmbeddingOutput,
        Setup::EmbeddingMatrix,
    ] {
        let p = problem(setup, 2).unwrap();
        for norm in [StepNorm::Raw, StepNorm::L2(Scope::PerBatch), StepNorm::Sign] {
            let step = Fgm::new(0.01)
                .unwrap()
                .with_norm(norm)
                .with_objective(Objective::AdversarialOnly)
                .step(&p.batch(), &mut Rng::new(0))
                .unwrap();
            let (adv, clean) = (
                scalar(&step.loss).unwrap(),
                scalar(&step.clean_loss).unwrap(),
            );
            assert!(adv > clean, "{setup:?} {norm:?}: {adv} <= {clean}");
        }
    }
}

#[test]
fn gradients_are_those_at_the_perturbed_point_plus_the_clean_ones() {
    let p = problem(Setup::MlpInput, 3).unwrap();
    let mut fgm = Fgm::new(0.2).unwrap();
    let pg = p.target.loss_and_gradient(&p.loss).unwrap();
    let delta = fgm.perturbation(&p.target, &pg.gradient).unwrap();
    // Independently: gradients of the loss at x + delta, with x + delta built by hand.
    let at_perturbed = (p.loss)(&(p.target.point() + &delta).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let adversarial = flat_gradient(&p.vars, &at_perturbed).unwrap();
    let clean = flat_gradient(&p.vars, &pg.grads).unwrap();
    let only = fgm
        .with_objective(Objective::AdversarialOnly)
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    assert!(
        relative_error(&flat_gradient(&p.vars, &only.grads).unwrap(), &adversarial).unwrap()
            < 1e-13
    );
    let both = fgm.step(&p.batch(), &mut Rng::new(0)).unwrap();
    let expected = (clean + adversarial).unwrap();
    assert!(
        relative_error(&flat_gradient(&p.vars, &both.grads).unwrap(), &expected).unwrap() < 1e-13
    );
    assert_eq!(
        (
            both.passes.forward,
            both.passes.backward,
            both.passes.double_backward
        ),
        (2, 2, 0)
    );
}

#[test]
fn matrix_perturbation_is_shared_by_every_occurrence_of_a_token() {
    let model =
        advtrain::toy::EmbeddingClassifier::new(10, 4, 2, 5, DType::F64, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 3, 5], [5, 3, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1.0f64, 1.0, 1.0], [1.0, 1.0, 0.0]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let target = Target::embedding_matrix(model.embedding_matrix()).unwrap();
    let loss = |w: &Tensor| model.loss_from_embeddings(&model.embed_with(w, &ids)?, &mask, &labels);
    let g = target.loss_and_gradient(&loss).unwrap().gradient;
    let delta = Fgm::new(0.5).unwrap().perturbation(&target, &g).unwrap();
    let moved = (model
        .embed_with(&target.perturb(&delta).unwrap(), &ids)
        .unwrap()
        - model.embed(&ids).unwrap())
    .unwrap();
    let moved: Vec<Vec<Vec<f64>>> = moved.to_vec3().unwrap();
    assert_eq!(moved[0][0], moved[0][1]);
    assert_eq!(moved[0][0], moved[1][1]);
    assert_eq!(moved[0][2], moved[1][0]);
    assert_ne!(moved[0][0], moved[0][2]);
}

#[test]
fn bad_eps_is_an_error() {
    assert!(matches!(
        Fgm::new(-0.1),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    assert!(matches!(
        Fgm::new(f64::NAN),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    assert!(matches!(
        Fgm::new(f64::INFINITY),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
    let msg = Fgm::new(-1.0).unwrap_err().to_string();
    assert!(msg.contains("eps") && msg.contains("fix"), "{msg}");
}

#[test]
fn zero_gradient_is_an_error_unless_allowed_and_never_nan() {
    let x = Tensor::new(&[[1.0f64, 2.0], [0.5, -1.0]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let saturated = |x: &Tensor| (x.sqr()?.neg()? - 1.0)?.relu()?.sum_all();
    let mut fgm = Fgm::new(0.1).unwrap();
    assert!(matches!(
        fgm.step(&Batch::new(&target, &saturated), &mut Rng::new(0)),
        Err(Error::ZeroGradient { .. })
    ));
    // The one zero-gradient policy (advtrain::GradientCheck): every method checks the point's
    // gradient as its batch says; a zero gradient is allowed by asking for the finiteness check only.
    let step = fgm
        .step(
            &Batch::new(&target, &saturated).with_check(advtrain::GradientCheck::Finite),
            &mut Rng::new(0),
        )
        .unwrap();
    assert!(scalar(&step.loss).unwrap().is_finite());
    let nan = |x: &Tensor| x.sum_all()? * f64::NAN;
    assert!(matches!(
        fgm.step(&Batch::new(&target, &nan), &mut Rng::new(0)),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn fgm_trains_a_model_in_a_user_loop() {
    use candle_nn::Optimizer;
    let device = Device::Cpu;
    let model = advtrain::toy::Mlp::new(
        &[4, 16, 3],
        advtrain::toy::Activation::Tanh,
        9,
        DType::F32,
        &device,
    )
    .unwrap();
    let mut rng = advtrain::Rng::new(10);
    let (x, y) =
        advtrain::toy::classification_batch(32, 4, 3, DType::F32, &device, &mut rng).unwrap();
    let mut opt = candle_nn::SGD::new(model.vars(), 0.5).unwrap();
    let loss = |x: &Tensor| model.loss(x, &y);
    let mut fgm = Fgm::new(0.05).unwrap();
    let first = scalar(
        &fgm.step(
            &Batch::new(&Target::input(&x).unwrap(), &loss),
            &mut Rng::new(0),
        )
        .unwrap()
        .clean_loss,
    )
    .unwrap();
    for _ in 0..50 {
        let step = fgm
            .step(
                &Batch::new(&Target::input(&x).unwrap(), &loss),
                &mut Rng::new(0),
            )
            .unwrap();
        opt.step(&step.grads).unwrap();
    }
    let last = scalar(
        &fgm.step(
            &Batch::new(&Target::input(&x).unwrap(), &loss),
            &mut Rng::new(0),
        )
        .unwrap()
        .clean_loss,
    )
    .unwrap();
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

#[test]
fn a_config_with_an_empty_valid_range_is_refused() {
    let config = advtrain::FgmConfig {
        range: Some(advtrain::ValidRange { lo: 1.0, hi: 0.0 }),
        ..advtrain::FgmConfig::default()
    };
    let Err(Error::InvalidArgument { name, .. }) = Fgm::from_config(config) else {
        panic!("an empty range was accepted");
    };
    assert_eq!(name, "range");
}

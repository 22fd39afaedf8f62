//! SMART and the Bregman proximal point step (src/smart.rs).

use advtrain::toy::{Activation, EmbeddingClassifier, Mlp};
use advtrain::verify::{gradcheck, relative_error, scalar};
use advtrain::{Batch, Method};
use advtrain::{BregmanProximal, Error, Rng, Smart, SmartDivergence, Target};
use candle_core::{DType, Device, Tensor};

#[test]
fn symmetric_kl_regulariser_is_zero_at_zero_and_its_gradient_matches_finite_differences() {
    let model = Mlp::new(&[4, 8, 3], Activation::Tanh, 1, DType::F64, &Device::Cpu).unwrap();
    let x = Rng::new(2)
        .normal((3, 4), DType::F64, &Device::Cpu)
        .unwrap();
    let target = Target::input(&x).unwrap();
    let logits = |x: &Tensor| model.forward(x);
    for divergence in [SmartDivergence::SymmetricKl, SmartDivergence::SquaredError] {
        let smart = Smart::new(1.0, divergence).unwrap();
        let zero = x.zeros_like().unwrap();
        assert_eq!(
            scalar(&smart.divergence_at(&target, &logits, &zero).unwrap()).unwrap(),
            0.0
        );
        let r = (Rng::new(3)
            .normal((3, 4), DType::F64, &Device::Cpu)
            .unwrap()
            * 0.3)
            .unwrap();
        let check = gradcheck(|r| Ok(smart.divergence_at(&target, &logits, r)?), &r, 1e-5).unwrap();
        assert!(
            check.norm > 0.0 && check.relative_error < 1e-8,
            "{divergence:?}: {check:?}"
        );
        // At r = 0 the divergence is at its minimum: zero gradient.
        let at_zero = advtrain::verify::autodiff_gradient(
            |r| Ok(smart.divergence_at(&target, &logits, r)?),
            &zero,
        )
        .unwrap();
        assert!(advtrain::verify::l2_norm(&at_zero).unwrap() < 1e-15);
    }
}

#[test]
fn step_trains_on_task_loss_plus_the_regulariser_at_the_attack_point() {
    let model = EmbeddingClassifier::new(30, 8, 3, 1, DType::F64, &Device::Cpu).unwrap();
    let batch = model.batch(4, 5, 3, &mut Rng::new(1)).unwrap();
    let e = model.embed(&batch.ids).unwrap();
    let target = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
    let logits = |e: &Tensor| model.logits_from_embeddings(e, &batch.mask);
    let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &batch.labels);
    let mut smart = Smart::new(2.0, SmartDivergence::SymmetricKl)
        .unwrap()
        .with_steps(2)
        .unwrap()
        .with_step_size(0.1)
        .unwrap();
    let step = smart
        .step(
            &Batch::with_outputs(&target, &logits, &task),
            &mut Rng::new(7),
        )
        .unwrap();
    // The same attack point (same seed), and the objective's gradient by plain autodiff.
    let clean = logits(&e).unwrap();
    let delta = smart
        .attack(
            &Batch::with_outputs(&target, &logits, &task),
            &clean,
            &mut Rng::new(7),
        )
        .unwrap();
    assert!(
        advtrain::verify::l2_norm(&delta).unwrap() > 0.05,
        "the attack moved"
    );
    let objective = (task(&clean).unwrap()
        + (smart.divergence_at(&target, &logits, &delta).unwrap() * 2.0).unwrap())
    .unwrap();
    let vars = model.vars();
    let expected = advtrain::verify::flat_gradient(&vars, &objective.backward().unwrap()).unwrap();
    let got = advtrain::verify::flat_gradient(&vars, &step.grads).unwrap();
    assert!(relative_error(&got, &expected).unwrap() < 1e-12);
    assert!(scalar(&step.loss).unwrap() > scalar(&step.clean_loss).unwrap());
    // Ascent raised the divergence above its value at the starting noise.
    let start = smart
        .with_steps(1)
        .unwrap()
        .with_step_size(1e-12)
        .unwrap()
        .attack(
            &Batch::with_outputs(&target, &logits, &task),
            &clean,
            &mut Rng::new(7),
        )
        .unwrap();
    assert!(
        scalar(&smart.divergence_at(&target, &logits, &delta).unwrap()).unwrap()
            > scalar(&smart.divergence_at(&target, &logits, &start).unwrap()).unwrap()
    );
}

#[test]
fn bregman_anchor_is_an_exponential_moving_average() {
    let model = Mlp::new(&[3, 4, 2], Activation::Tanh, 1, DType::F64, &Device::Cpu).unwrap();
    let vars = model.vars();
    let x = Rng::new(1)
        .normal((2, 3), DType::F64, &Device::Cpu)
        .unwrap();
    let mut prox = BregmanProximal::new(vars.clone(), 1.0, 0.9).unwrap();
    let outputs = model.forward(&x).unwrap();
    let anchor = prox.anchor_outputs(|| model.forward(&x)).unwrap();
    assert_eq!(
        scalar(
            &prox
                .penalty(SmartDivergence::SymmetricKl, &outputs, &anchor)
                .unwrap()
        )
        .unwrap(),
        0.0
    );
    let before: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    for v in &vars {
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
    }
    prox.update().unwrap();
    for ((a, b), v) in prox.anchor().iter().zip(&before).zip(&vars) {
        let expected = ((v.as_tensor() * 0.1).unwrap() + (b * 0.9).unwrap()).unwrap();
        assert!(relative_error(a, &expected).unwrap() < 1e-15);
    }
    // Evaluating at the anchor restores the current weights afterwards, and the penalty is now positive.
    let now = model.forward(&x).unwrap();
    let anchor = prox.anchor_outputs(|| model.forward(&x)).unwrap();
    assert_eq!(
        model.forward(&x).unwrap().to_vec2::<f64>().unwrap(),
        now.to_vec2::<f64>().unwrap()
    );
    assert!(
        scalar(
            &prox
                .penalty(SmartDivergence::SymmetricKl, &now, &anchor)
                .unwrap()
        )
        .unwrap()
            > 0.0
    );
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        Smart::new(-1.0, SmartDivergence::SymmetricKl),
        Err(Error::InvalidArgument { name: "lambda", .. })
    ));
    let s = Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap();
    assert!(matches!(
        s.with_steps(0),
        Err(Error::InvalidArgument { name: "steps", .. })
    ));
    assert!(matches!(
        s.with_step_size(0.0),
        Err(Error::InvalidArgument {
            name: "step_size",
            ..
        })
    ));
    let a = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
    let b = Tensor::zeros((2, 4), DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(
        SmartDivergence::SymmetricKl.loss(&a, &b),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        BregmanProximal::new(vec![], 1.0, 1.0),
        Err(Error::InvalidArgument { name: "beta", .. })
    ));
}

#[test]
fn the_attack_starts_from_noise_of_standard_deviation_noise_std() {
    // mt-dnn's generate_noise draws N(0, 1) * adv_noise_var: 1e-5 is a standard deviation. A step of
    // 1e-12 leaves the start visible; its spread over 20,000 coordinates estimates the deviation
    // to about 0.5% (one standard error of a sample deviation is sigma / sqrt(2n)).
    let model = Mlp::new(&[2_000, 3], Activation::Tanh, 1, DType::F64, &Device::Cpu).unwrap();
    let x = Rng::new(2)
        .normal((10, 2_000), DType::F64, &Device::Cpu)
        .unwrap();
    let target = Target::input(&x).unwrap();
    let logits = |x: &Tensor| model.forward(x);
    let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1, 2, 0], &Device::Cpu).unwrap();
    let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &labels);
    let smart = Smart::new(1.0, SmartDivergence::SymmetricKl)
        .unwrap()
        .with_step_size(1e-12)
        .unwrap();
    assert_eq!(smart.config().noise_std, 1e-5);
    let delta = smart
        .attack(
            &Batch::with_outputs(&target, &logits, &task),
            &logits(&x).unwrap(),
            &mut Rng::new(3),
        )
        .unwrap();
    let values: Vec<f64> = delta.flatten_all().unwrap().to_vec1().unwrap();
    let n = values.len() as f64;
    let std = (values.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
    assert!((std / 1e-5 - 1.0).abs() < 0.03, "std {std:e}");
}

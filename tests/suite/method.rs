//! One method interface (src/method.rs): every method through `Box<dyn Method>` in one loop.

use advtrain::toy::{EmbeddingClassifier, TokenBatch};
use advtrain::{
    Batch, CurvatureMethod, Divergence, Error, Fgm, FreeAt, FreeLb, GradientCheck, GradientPenalty,
    Laplacian, Method, Noise, Pgd, Plain, Rng, Smart, SmartDivergence, Target, TargetShift, Vat,
    Yopo,
};
use candle_core::{DType, Device, Tensor};

fn model() -> (EmbeddingClassifier, TokenBatch) {
    let model = EmbeddingClassifier::new(30, 8, 3, 1, DType::F64, &Device::Cpu).unwrap();
    let batch = model.batch(4, 6, 3, &mut Rng::new(3)).unwrap();
    (model, batch)
}

fn every_method() -> Vec<(&'static str, Box<dyn Method>)> {
    vec![
        ("plain", Box::new(Plain)),
        ("noise", Box::new(Noise::Gaussian { sigma: 0.01 })),
        ("fgm", Box::new(Fgm::new(0.1).unwrap())),
        ("fgsm", Box::new(Fgm::fgsm(0.01).unwrap())),
        (
            "gradient penalty",
            Box::new(GradientPenalty::new(0.1).unwrap()),
        ),
        ("pgd", Box::new(Pgd::new(0.1, 0.05, 2).unwrap())),
        ("freeat", Box::new(FreeAt::new(0.01, 2).unwrap())),
        ("yopo", Box::new(Yopo::new(0.01, 0.005, 2, 2).unwrap())),
        ("freelb", Box::new(FreeLb::new(0.05, 2).unwrap())),
        (
            "smart",
            Box::new(Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap()),
        ),
        ("vat", Box::new(Vat::new(0.1).unwrap())),
        ("laplacian", Box::new(Laplacian::new(0.1).unwrap())),
        (
            "laplacian (finite differences)",
            Box::new(
                Laplacian::new(0.1)
                    .unwrap()
                    .with_method(CurvatureMethod::FiniteDifference { h: 1e-3 })
                    .unwrap(),
            ),
        ),
        (
            "target shift",
            Box::new(TargetShift::new(0.1, Divergence::SquaredError).unwrap()),
        ),
        (
            "local linearity",
            Box::new(
                advtrain::LocalLinearity::new(0.1)
                    .unwrap()
                    .with_norm(advtrain::StepNorm::L2(advtrain::Scope::PerExample))
                    .unwrap()
                    .with_steps(2, 0.05)
                    .unwrap(),
            ),
        ),
    ]
}

#[test]
fn every_method_steps_through_one_interface_in_one_loop() {
    let (model, b) = model();
    let logits = |e: &Tensor| model.logits_from_embeddings(e, &b.mask);
    let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &b.labels);
    let first = |e: &Tensor| model.first_block(e, &b.mask);
    let rest = |h: &Tensor| task(&model.head_logits(h, &b.mask)?);
    let vars = model.vars();
    for (name, mut method) in every_method() {
        let mut rng = Rng::new(1);
        assert_eq!(
            method.replays(),
            if name == "freeat" { 2 } else { 1 },
            "{name}"
        );
        for _ in 0..method.replays() {
            let embeddings = model.embed(&b.ids).unwrap();
            let target = Target::embedding_output(&embeddings, Some(&b.mask)).unwrap();
            let batch =
                Batch::with_outputs(&target, &logits, &task).with_first_layer(&first, &rest);
            let step = method.step(&batch, &mut rng).unwrap();
            let loss = step.loss.to_scalar::<f64>().unwrap();
            assert!(loss.is_finite() && loss > 0.0, "{name}: loss {loss}");
            // Every weight the loss depends on has a gradient for the optimiser.
            for var in &vars {
                assert!(
                    step.grads.get(var.as_tensor()).is_some(),
                    "{name}: a weight has no gradient"
                );
            }
            assert!(
                step.passes.forward >= 1 && step.passes.backward >= 1,
                "{name}"
            );
        }
    }
}

#[test]
fn a_method_that_lacks_what_it_needs_names_the_constructor() {
    let (model, b) = model();
    let loss = |e: &Tensor| model.loss_from_embeddings(e, &b.mask, &b.labels);
    let embeddings = model.embed(&b.ids).unwrap();
    let target = Target::embedding_output(&embeddings, Some(&b.mask)).unwrap();
    let batch = Batch::new(&target, &loss);
    let mut needs_outputs: Vec<Box<dyn Method>> = vec![
        Box::new(Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap()),
        Box::new(Vat::new(0.1).unwrap()),
        Box::new(TargetShift::new(0.1, Divergence::SquaredError).unwrap()),
    ];
    for method in &mut needs_outputs {
        let e = method.step(&batch, &mut Rng::new(0)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { name: "batch", .. }));
        assert!(e.to_string().contains("Batch::with_outputs"), "{e}");
    }
    let e = Yopo::new(0.01, 0.005, 1, 1)
        .unwrap()
        .step(&batch, &mut Rng::new(0))
        .unwrap_err();
    assert!(e.to_string().contains("Batch::with_first_layer"), "{e}");
}

#[test]
fn the_gradient_check_is_on_for_the_cpu_and_off_elsewhere_by_default() {
    assert_eq!(
        GradientCheck::default_for(&Device::Cpu),
        GradientCheck::FiniteNonZero
    );
    let x = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    // A saturated loss: its gradient is exactly zero (candle drops a path multiplied by 0 outright).
    let flat = |x: &Tensor| (x.sqr()?.neg()? - 1.0)?.relu()?.sum_all()?.affine(1.0, 1.0);
    // One policy for every method: a zero gradient is an error when checked, a zero step otherwise.
    let mut methods: Vec<Box<dyn Method>> = vec![
        Box::new(Fgm::new(0.1).unwrap()),
        Box::new(Pgd::new(0.1, 0.05, 2).unwrap()),
        Box::new(FreeLb::new(0.05, 2).unwrap()),
        Box::new(FreeAt::new(0.05, 1).unwrap()),
    ];
    for (i, method) in methods.iter_mut().enumerate() {
        let checked = Batch::new(&target, &flat);
        let outcome = method.step(&checked, &mut Rng::new(0));
        assert!(
            matches!(outcome, Err(Error::ZeroGradient { .. })),
            "method {i}: {outcome:?}"
        );
        // Off reads nothing on the host: even a NaN gradient passes unseen (the GPU default).
        let nan = |x: &Tensor| x.sum_all()? * f64::NAN;
        assert!(matches!(
            method.step(&Batch::new(&target, &nan), &mut Rng::new(0)),
            Err(Error::NonFinite { .. })
        ));
        assert!(
            method
                .step(
                    &Batch::new(&target, &nan).with_check(GradientCheck::Off),
                    &mut Rng::new(0)
                )
                .is_ok()
        );
        for check in [GradientCheck::Finite, GradientCheck::Off] {
            let step = method
                .step(&checked.with_check(check), &mut Rng::new(0))
                .unwrap();
            assert_eq!(step.clean_loss.to_scalar::<f64>().unwrap(), 1.0);
        }
    }
}

#[test]
fn every_config_is_a_plain_struct_whose_default_is_valid_and_checked_in_one_place() {
    use advtrain::{
        FgmConfig, FreeAtConfig, FreeLbConfig, GradientPenaltyConfig, LaplacianConfig, PgdConfig,
        SmartConfig, TargetShiftConfig, VatConfig, YopoConfig,
    };
    // The defaults build.
    Fgm::from_config(FgmConfig::default()).unwrap();
    GradientPenalty::from_config(GradientPenaltyConfig::default()).unwrap();
    Pgd::from_config(PgdConfig::default()).unwrap();
    FreeAt::from_config(FreeAtConfig::default()).unwrap();
    Yopo::from_config(YopoConfig::default()).unwrap();
    FreeLb::from_config(FreeLbConfig::default()).unwrap();
    Smart::from_config(SmartConfig::default()).unwrap();
    Vat::from_config(VatConfig::default()).unwrap();
    Laplacian::from_config(LaplacianConfig::default()).unwrap();
    TargetShift::from_config(TargetShiftConfig::default()).unwrap();
    // The shortcuts are the config with the rest at its defaults.
    assert_eq!(
        *Pgd::new(0.5, 0.1, 4).unwrap().config(),
        PgdConfig {
            eps: 0.5,
            alpha: 0.1,
            steps: 4,
            ..PgdConfig::default()
        }
    );
    assert_eq!(Vat::new(2.0).unwrap().config().xi, VatConfig::default().xi);
    // A bad value is refused at construction, naming the field.
    let named = |e: Error| match e {
        Error::InvalidArgument { name, .. } => name,
        other => panic!("{other}"),
    };
    let bad_pgd = PgdConfig {
        steps: 0,
        ..PgdConfig::default()
    };
    assert_eq!(named(Pgd::from_config(bad_pgd).unwrap_err()), "steps");
    let bad_vat = VatConfig {
        weight: -1.0,
        ..VatConfig::default()
    };
    assert_eq!(named(Vat::from_config(bad_vat).unwrap_err()), "weight");
    let bad_freelb = FreeLbConfig {
        norm: advtrain::StepNorm::Raw,
        ..FreeLbConfig::default()
    };
    assert_eq!(named(FreeLb::from_config(bad_freelb).unwrap_err()), "norm");
    let bad_smart = SmartConfig {
        step_size: 0.0,
        ..SmartConfig::default()
    };
    assert_eq!(
        named(Smart::from_config(bad_smart).unwrap_err()),
        "step_size"
    );
}

#[test]
fn a_divergence_ascent_may_start_at_a_zero_gradient_and_a_zero_ball_is_no_nan() {
    // SMART without starting noise: its first ascent gradient is exactly zero (the two outputs
    // coincide), which is no cut path; the default check accepts it.
    let (model, b) = model();
    let logits = |e: &Tensor| model.logits_from_embeddings(e, &b.mask);
    let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &b.labels);
    let embeddings = model.embed(&b.ids).unwrap();
    let target = Target::embedding_output(&embeddings, Some(&b.mask)).unwrap();
    let batch = Batch::with_outputs(&target, &logits, &task);
    let step = Smart::new(1.0, SmartDivergence::SymmetricKl)
        .unwrap()
        .with_noise_std(0.0)
        .unwrap()
        .step(&batch, &mut Rng::new(0))
        .unwrap();
    assert!(step.loss.to_scalar::<f64>().unwrap().is_finite());
    // PGD in a ball of radius 0 is plain training, with no 0/0 in the projection.
    let x = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap();
    let input = Target::input(&x).unwrap();
    let flat = |x: &Tensor| (x.sqr()?.neg()? - 1.0)?.relu()?.sum_all()?.affine(1.0, 1.0);
    let step = Pgd::new(0.0, 0.1, 2)
        .unwrap()
        .step(
            &Batch::new(&input, &flat).with_check(GradientCheck::Finite),
            &mut Rng::new(0),
        )
        .unwrap();
    assert_eq!(step.loss.to_scalar::<f64>().unwrap(), 2.0);
}

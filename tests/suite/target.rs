//! Perturbation targets (src/target.rs).

use advtrain::toy::{EmbeddingClassifier, Setup, problem};
use advtrain::{Batch, Method};
use advtrain::{Error, Rng, Target, TargetKind};
use candle_core::{DType, Device, Tensor, Var};

fn embedding_model() -> (EmbeddingClassifier, advtrain::toy::TokenBatch) {
    let model = EmbeddingClassifier::new(30, 8, 3, 1, DType::F64, &Device::Cpu).unwrap();
    let batch = model.batch(5, 7, 3, &mut Rng::new(2)).unwrap();
    (model, batch)
}

/// The model as its user has it: it reads its own embedding matrix and ignores the point.
fn unchanged_loss(
    model: &EmbeddingClassifier,
    batch: &advtrain::toy::TokenBatch,
    _point: &Tensor,
) -> candle_core::Result<Tensor> {
    model.loss_from_embeddings(&model.embed(&batch.ids)?, &batch.mask, &batch.labels)
}

/// The same model written to take the embedding matrix, for the matrix target.
fn whole_loss(
    model: &EmbeddingClassifier,
    batch: &advtrain::toy::TokenBatch,
    matrix: &Tensor,
) -> candle_core::Result<Tensor> {
    model.loss_from_embeddings(
        &model.embed_with(matrix, &batch.ids)?,
        &batch.mask,
        &batch.labels,
    )
}

#[test]
fn embedding_output_gradient_is_zero_at_padding_and_matrix_still_gets_its_gradient() {
    let (model, batch) = embedding_model();
    let e = model.embed(&batch.ids).unwrap();
    let target = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
    let loss = |e: &Tensor| model.loss_from_embeddings(e, &batch.mask, &batch.labels);
    let pg = target.loss_and_gradient(&loss).unwrap();
    let mask: Vec<Vec<f64>> = batch.mask.to_vec2().unwrap();
    let g: Vec<Vec<Vec<f64>>> = pg.gradient.to_vec3().unwrap();
    let mut nonzero = 0;
    for (b, row) in mask.iter().enumerate() {
        for (t, m) in row.iter().enumerate() {
            let size: f64 = g[b][t].iter().map(|v| v.abs()).sum();
            if *m == 0.0 {
                assert_eq!(size, 0.0, "padded position ({b}, {t}) has a gradient");
            } else if size > 0.0 {
                nonzero += 1;
            }
        }
    }
    assert!(nonzero > 0);
    assert!(pg.grads.get(model.embedding_matrix().as_tensor()).is_some());
}

#[test]
fn perturbation_never_touches_padded_positions() {
    let (model, batch) = embedding_model();
    let e = model.embed(&batch.ids).unwrap();
    let target = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
    let delta = Rng::new(3)
        .normal(e.shape(), DType::F64, &Device::Cpu)
        .unwrap();
    let moved = (target.perturb(&delta).unwrap() - &e).unwrap();
    let moved: Vec<Vec<Vec<f64>>> = moved.to_vec3().unwrap();
    let mask: Vec<Vec<f64>> = batch.mask.to_vec2().unwrap();
    for (b, row) in mask.iter().enumerate() {
        for (t, m) in row.iter().enumerate() {
            let size: f64 = moved[b][t].iter().map(|v| v.abs()).sum();
            assert_eq!(size == 0.0, *m == 0.0, "position ({b}, {t})");
        }
    }
}

#[test]
fn point_gradient_matches_finite_differences_for_every_target() {
    for setup in [
        Setup::MlpInput,
        Setup::EmbeddingOutput,
        Setup::EmbeddingMatrix,
    ] {
        let p = problem(setup, 4).unwrap();
        let pg = p.target.loss_and_gradient(&p.loss).unwrap();
        let fd =
            advtrain::verify::finite_difference_gradient(&p.loss, p.target.point(), 1e-5).unwrap();
        // Padded positions do not move the loss, and the masked gradient is zero there too.
        let fd = p.target.apply_mask(&fd).unwrap();
        let err = advtrain::verify::relative_error(&pg.gradient, &fd).unwrap();
        assert!(err < 1e-8, "{setup:?}: {err}");
    }
}

#[test]
fn per_example_sum_groups_by_example() {
    let x = Tensor::arange(0f64, 12.0, &Device::Cpu)
        .unwrap()
        .reshape((3, 2, 2))
        .unwrap();
    let target = Target::input(&x).unwrap();
    let sums: Vec<f64> = target
        .per_example_sum(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(sums, vec![6.0, 22.0, 38.0]);
    assert_eq!(target.per_example_sum(&x).unwrap().dims(), &[3, 1, 1]);
    let w = Var::from_tensor(&x.reshape((3, 4)).unwrap()).unwrap();
    assert!(matches!(
        Target::weight(&w).unwrap().per_example_sum(w.as_tensor()),
        Err(Error::InvalidArgument { name: "scope", .. })
    ));
}

#[test]
fn a_cut_gradient_path_is_reported_not_silently_zero() {
    let x = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let detached = |x: &Tensor| x.detach().sqr()?.sum_all();
    let err = target.check_gradient(&detached).unwrap_err();
    assert!(matches!(err, Error::NoGradient { .. }));
    let text = err.to_string();
    assert!(
        text.contains("softmax_last_dim") && text.contains("advtrain::ops"),
        "{text}"
    );
}

#[test]
fn fused_layer_norm_is_named_when_it_cuts_the_path() {
    // candle's fused layer norm passes no gradient (f32: it has no f64 kernel).
    let e = Rng::new(5)
        .normal((2, 3, 4), DType::F32, &Device::Cpu)
        .unwrap();
    let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let target = Target::embedding_output(&e, None).unwrap();
    let fused = |e: &Tensor| {
        candle_nn::ops::layer_norm(e, &w, &b, 1e-5)?
            .sqr()?
            .sum_all()
    };
    let err = target.check_gradient(&fused).unwrap_err();
    assert!(
        err.to_string().contains("candle_nn::ops::layer_norm"),
        "{err}"
    );
    // The crate's differentiable layer norm on the same input works. (A layer norm's output has a
    // constant squared norm, so the loss is a weighted sum, whose gradient is not zero.)
    let weights = Rng::new(6)
        .normal((2, 3, 4), DType::F32, &Device::Cpu)
        .unwrap();
    let weighted = |e: &Tensor| -> candle_core::Result<Tensor> {
        (advtrain::ops::layer_norm(e, Some(&w), Some(&b), 1e-5)? * &weights)?.sum_all()
    };
    target.check_gradient(&weighted).unwrap();
}

#[test]
fn zero_and_non_finite_gradients_are_reported() {
    let x = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    // A path exists, but every derivative through it is zero (a saturated ReLU).
    let flat = |x: &Tensor| (x.sqr()?.neg()? - 1.0)?.relu()?.sum_all();
    assert!(matches!(
        target.check_gradient(&flat),
        Err(Error::ZeroGradient { .. })
    ));
    let nan = |x: &Tensor| x.sum_all()? * f64::NAN;
    // Multiplying by 0.0 makes candle drop the path altogether: reported as a cut path.
    let times_zero = |x: &Tensor| x.sum_all()? * 0.0;
    assert!(matches!(
        target.check_gradient(&times_zero),
        Err(Error::NoGradient { .. })
    ));
    assert!(matches!(
        target.check_gradient(&nan),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn bad_shapes_dtypes_and_empty_batches_are_errors() {
    let d = Device::Cpu;
    let empty = Tensor::zeros((0, 3), DType::F64, &d).unwrap();
    assert!(matches!(
        Target::input(&empty),
        Err(Error::EmptyBatch { .. })
    ));
    let ints = Tensor::new(&[[1u32, 2]], &d).unwrap();
    assert!(matches!(
        Target::input(&ints),
        Err(Error::InvalidArgument { name: "x", .. })
    ));
    let e = Tensor::zeros((2, 3, 4), DType::F64, &d).unwrap();
    let bad_mask = Tensor::ones((2, 4), DType::F64, &d).unwrap();
    assert!(matches!(
        Target::embedding_output(&e, Some(&bad_mask)),
        Err(Error::ShapeMismatch { name: "mask", .. })
    ));
    let all_padding = Tensor::zeros((2, 3), DType::F64, &d).unwrap();
    assert!(matches!(
        Target::embedding_output(&e, Some(&all_padding)),
        Err(Error::EmptyBatch { name: "mask", .. })
    ));
    let not_binary = Tensor::full(0.5f64, (2, 3), &d).unwrap();
    assert!(matches!(
        Target::embedding_output(&e, Some(&not_binary)),
        Err(Error::InvalidArgument { name: "mask", .. })
    ));
    assert!(matches!(
        Target::embedding_output(&Tensor::zeros((2, 3), DType::F64, &d).unwrap(), None),
        Err(Error::ShapeMismatch {
            name: "embeddings",
            ..
        })
    ));
    let target = Target::input(&Tensor::zeros((2, 3), DType::F64, &d).unwrap()).unwrap();
    assert!(matches!(
        target.perturb(&Tensor::zeros((3, 2), DType::F64, &d).unwrap()),
        Err(Error::ShapeMismatch { name: "delta", .. })
    ));
    assert!(matches!(
        target.perturb(&Tensor::zeros((2, 3), DType::F32, &d).unwrap()),
        Err(Error::DTypeMismatch { name: "delta", .. })
    ));
    let per_row = |x: &Tensor| x.sum(1);
    assert!(matches!(
        target.loss(&per_row),
        Err(Error::ShapeMismatch {
            name: "loss_fn",
            ..
        })
    ));
}

#[test]
fn kinds_and_masks_are_reported() {
    let (model, batch) = embedding_model();
    let e = model.embed(&batch.ids).unwrap();
    let t = Target::embedding_output(&e, Some(&batch.mask)).unwrap();
    assert_eq!(t.kind(), TargetKind::EmbeddingOutput);
    assert!(t.has_examples() && t.mask().is_some());
    let m = Target::embedding_matrix(model.embedding_matrix()).unwrap();
    assert_eq!(m.kind(), TargetKind::Weight);
    assert!(!m.has_examples());
    assert_eq!(m.kind().to_string(), "weight (embedding matrix)");
}

/// Every weight's gradient and the loss of `a` and `b` agree to `tolerance` (relative).
fn steps_agree(a: &advtrain::Step, b: &advtrain::Step, vars: &[Var], tolerance: f64, what: &str) {
    let loss = |s: &advtrain::Step| s.loss.to_scalar::<f64>().unwrap();
    assert!(
        (loss(a) - loss(b)).abs() <= tolerance * loss(a).abs(),
        "{what}: loss {} vs {}",
        loss(a),
        loss(b)
    );
    for var in vars {
        let (ga, gb) = (
            a.grads.get(var.as_tensor()).unwrap(),
            b.grads.get(var.as_tensor()).unwrap(),
        );
        let e = advtrain::verify::relative_error(ga, gb).unwrap();
        assert!(
            e <= tolerance,
            "{what}: a weight's gradient differs by {e:e}"
        );
    }
}

#[test]
fn embedding_rows_give_the_matrix_targets_steps_without_copying_the_matrix() {
    use advtrain::{Fgm, GradientPenalty, Pgd, Scope, StepNorm};
    let (model, batch) = embedding_model();
    let matrix = Target::embedding_matrix(model.embedding_matrix()).unwrap();
    let whole = |w: &Tensor| whole_loss(&model, &batch, w);
    let (rows, lookup) = Target::embedding_rows(model.embedding_matrix(), &batch.ids).unwrap();
    let looked_up =
        |r: &Tensor| model.loss_from_embeddings(&lookup.embed(r)?, &batch.mask, &batch.labels);
    // The point holds each looked-up row once: fewer rows than the vocabulary.
    let vocab = model.embedding_matrix().dim(0).unwrap();
    let distinct = rows.point().dim(0).unwrap();
    assert!(distinct < vocab, "{distinct} rows of {vocab}");
    assert_eq!(rows.kind(), TargetKind::Weight);
    // Unperturbed, the lookup is the model's own embedding output.
    let e = model.embed(&batch.ids).unwrap();
    let same = advtrain::verify::relative_error(&lookup.embed(rows.point()).unwrap(), &e).unwrap();
    assert_eq!(same, 0.0);
    let vars = model.vars();
    for norm in [StepNorm::Raw, StepNorm::L2(Scope::PerBatch), StepNorm::Sign] {
        let mut fgm = Fgm::new(0.3).unwrap().with_norm(norm);
        let a = fgm
            .step(&Batch::new(&matrix, &whole), &mut Rng::new(0))
            .unwrap();
        let b = fgm
            .step(&Batch::new(&rows, &looked_up), &mut Rng::new(0))
            .unwrap();
        steps_agree(&a, &b, &vars, 1e-12, &format!("FGM {norm:?}"));
        let mut gp = GradientPenalty::new(0.3).unwrap().with_norm(norm);
        let a = gp
            .step(&Batch::new(&matrix, &whole), &mut Rng::new(0))
            .unwrap();
        let b = gp
            .step(&Batch::new(&rows, &looked_up), &mut Rng::new(0))
            .unwrap();
        steps_agree(&a, &b, &vars, 1e-12, &format!("gradient penalty {norm:?}"));
    }
    let mut pgd = Pgd::new(0.3, 0.1, 3).unwrap();
    let a = pgd
        .step(&Batch::new(&matrix, &whole), &mut Rng::new(5))
        .unwrap();
    let b = pgd
        .step(&Batch::new(&rows, &looked_up), &mut Rng::new(5))
        .unwrap();
    steps_agree(&a, &b, &vars, 1e-12, "PGD-3 from zero");
}

#[test]
fn embedding_rows_reject_bad_ids() {
    let (model, batch) = embedding_model();
    let matrix = model.embedding_matrix();
    let too_large = Tensor::new(&[[1u32, 30]], &Device::Cpu).unwrap();
    let message = Target::embedding_rows(matrix, &too_large)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ids") && message.contains("30"),
        "{message}"
    );
    let floats = batch.mask.clone();
    let message = Target::embedding_rows(matrix, &floats)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ids") && message.contains("u32"),
        "{message}"
    );
    let empty = Tensor::zeros((0, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        Target::embedding_rows(matrix, &empty),
        Err(Error::EmptyBatch { .. })
    ));
}

#[test]
fn in_place_target_runs_the_users_unchanged_model_and_restores_the_weight_bit_for_bit() {
    use advtrain::{Fgm, FreeLb, Pgd, Scope, StepNorm};
    let (model, batch) = embedding_model();
    let weight = model.embedding_matrix();
    let before: Vec<Vec<f64>> = weight.to_vec2().unwrap();
    let unchanged = |p: &Tensor| unchanged_loss(&model, &batch, p);
    let whole = |w: &Tensor| whole_loss(&model, &batch, w);
    let in_place = Target::in_place(weight).unwrap();
    assert!(in_place.is_in_place());
    let matrix = Target::embedding_matrix(weight).unwrap();
    let vars = model.vars();
    // A fresh method for each target: FreeAT carries its perturbation from step to step.
    type Factory = fn() -> Box<dyn Method>;
    let methods: Vec<(&str, Factory)> = vec![
        ("FGM", || Box::new(Fgm::new(0.3).unwrap())),
        ("PGD", || Box::new(Pgd::new(0.3, 0.1, 3).unwrap())),
        ("FreeLB", || {
            Box::new(
                FreeLb::new(0.1, 3)
                    .unwrap()
                    .with_norm(StepNorm::L2(Scope::PerBatch))
                    .unwrap(),
            )
        }),
        ("FreeAT", || {
            Box::new(advtrain::FreeAt::new(0.01, 2).unwrap())
        }),
        ("noise", || {
            Box::new(advtrain::Noise::Gaussian { sigma: 0.01 })
        }),
        ("plain", || Box::new(advtrain::Plain)),
        ("gradient penalty", || {
            Box::new(advtrain::GradientPenalty::new(0.3).unwrap())
        }),
        ("Laplacian", || {
            Box::new(advtrain::Laplacian::new(0.3).unwrap())
        }),
    ];
    for (name, method) in methods {
        let a = method()
            .step(&Batch::new(&in_place, &unchanged), &mut Rng::new(4))
            .unwrap();
        let after: Vec<Vec<f64>> = weight.to_vec2().unwrap();
        assert!(
            after == before,
            "{name}: the weight was not restored bit for bit"
        );
        let b = method()
            .step(&Batch::new(&matrix, &whole), &mut Rng::new(4))
            .unwrap();
        steps_agree(&a, &b, &vars, 1e-12, name);
    }
    // An error in the middle of a perturbed pass still restores the weight.
    let calls = std::cell::Cell::new(0);
    let fails_when_perturbed = |p: &Tensor| {
        calls.set(calls.get() + 1);
        if calls.get() > 1 {
            return Err(candle_core::Error::Msg("the model failed".into()));
        }
        unchanged(p)
    };
    let e = Fgm::new(0.3)
        .unwrap()
        .step(
            &Batch::new(&in_place, &fails_when_perturbed),
            &mut Rng::new(0),
        )
        .unwrap_err();
    assert!(e.to_string().contains("the model failed"), "{e}");
    let after: Vec<Vec<f64>> = weight.to_vec2().unwrap();
    assert!(after == before, "not restored after an error");
    // Methods that need the model at two points in one graph refuse, naming the fix.
    let e = advtrain::GradientPenalty::new(0.3)
        .unwrap()
        .with_method(advtrain::PenaltyMethod::FiniteDifference { h: 1e-3 })
        .unwrap()
        .step(&Batch::new(&in_place, &unchanged), &mut Rng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Target::in_place") && e.contains("fix"), "{e}");
}

#[test]
fn an_in_place_target_built_once_keeps_the_optimisers_updates() {
    use advtrain::{Fgm, Noise, Smart, SmartDivergence, TargetShift, Vat};
    use candle_nn::Optimizer;
    // Two copies of one model: one trained through the in-place target (built once, before the
    // loop), the other through the matrix target with a model that takes the matrix.
    let run = |in_place: bool| -> Vec<Vec<f64>> {
        let (model, batch) = embedding_model();
        let weight = model.embedding_matrix();
        let mut opt = candle_nn::SGD::new(model.vars(), 0.5).unwrap();
        let unchanged = |p: &Tensor| unchanged_loss(&model, &batch, p);
        let whole = |w: &Tensor| whole_loss(&model, &batch, w);
        let target = if in_place {
            Target::in_place(weight).unwrap()
        } else {
            Target::embedding_matrix(weight).unwrap()
        };
        let loss: &dyn Fn(&Tensor) -> candle_core::Result<Tensor> =
            if in_place { &unchanged } else { &whole };
        let mut fgm = Fgm::new(0.3).unwrap();
        for _ in 0..3 {
            let step = fgm
                .step(&Batch::new(&target, loss), &mut Rng::new(0))
                .unwrap();
            opt.step(&step.grads).unwrap();
        }
        weight.to_vec2().unwrap()
    };
    let (a, b) = (run(true), run(false));
    let flat = |m: &Vec<Vec<f64>>| Tensor::new(m.concat(), &Device::Cpu).unwrap();
    let e = advtrain::verify::relative_error(&flat(&a), &flat(&b)).unwrap();
    assert!(e < 1e-12, "after three updates the weights differ by {e:e}");
    let (model, batch) = embedding_model();
    assert!(
        flat(&a)
            .sub(&flat(&model.embedding_matrix().to_vec2::<f64>().unwrap()))
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            > 0.0,
        "the weight trained"
    );
    // What cannot run in place says so, naming the target, before any pass.
    let weight = model.embedding_matrix();
    let target = Target::in_place(weight).unwrap();
    let logits = |_: &Tensor| model.logits_from_embeddings(&model.embed(&batch.ids)?, &batch.mask);
    let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &batch.labels);
    let batch = Batch::with_outputs(&target, &logits, &task);
    let mut refused: Vec<(&str, Box<dyn Method>)> = vec![
        (
            "multiplicative noise",
            Box::new(Noise::Bernoulli { keep: 0.9 }),
        ),
        (
            "SMART",
            Box::new(Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap()),
        ),
        ("VAT", Box::new(Vat::new(0.5).unwrap())),
        (
            "target shift",
            Box::new(TargetShift::new(0.1, advtrain::Divergence::SquaredError).unwrap()),
        ),
    ];
    for (name, method) in &mut refused {
        let e = method
            .step(&batch, &mut Rng::new(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Target::in_place"), "{name}: {e}");
    }
}

#[test]
fn a_mask_row_without_real_tokens_is_refused() {
    let e = Tensor::ones((2, 3, 4), DType::F64, &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f64, 1., 0.], [0., 0., 0.]], &Device::Cpu).unwrap();
    let Err(Error::InvalidArgument { name, reason, .. }) =
        Target::embedding_output(&e, Some(&mask))
    else {
        panic!("a fully padded row was accepted");
    };
    assert_eq!(name, "mask");
    assert!(reason.contains("row 1"), "{reason}");
    let fine = Tensor::new(&[[1f64, 1., 0.], [1., 0., 0.]], &Device::Cpu).unwrap();
    assert!(Target::embedding_output(&e, Some(&fine)).is_ok());
}

#[test]
fn per_example_sums_need_a_batch_dimension_and_features() {
    let x = Tensor::new(&[1f64, 2., 3.], &Device::Cpu).unwrap();
    let target = Target::input(&x).unwrap();
    let Err(Error::ShapeMismatch { name, got, .. }) = target.per_example_sum(&x) else {
        panic!("a rank-1 point was summed per example");
    };
    assert_eq!((name, got), ("point", vec![3]));
}

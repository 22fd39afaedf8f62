//! Composable regularisers (src/regulariser.rs): a composed step's gradient is the sum of its parts'.

use advtrain::toy::{EmbeddingClassifier, TokenBatch};
use advtrain::verify::{flat_gradient, relative_error};
use advtrain::{
    Batch, Divergence, Error, Fgm, GradientPenalty, LabelSmoothing, Laplacian, Method, Plain,
    Regulariser, Rng, Smart, SmartDivergence, Step, Target, TargetShift, Vat, WithRegulariser,
};
use candle_core::{DType, Device, Tensor, Var};

fn model() -> (EmbeddingClassifier, TokenBatch) {
    let model = EmbeddingClassifier::new(30, 8, 3, 1, DType::F64, &Device::Cpu).unwrap();
    let batch = model.batch(4, 6, 3, &mut Rng::new(5)).unwrap();
    (model, batch)
}

/// Runs `check` on a batch of the embedding model: its logits and cross-entropy on the embedding
/// output.
fn on_a_batch(check: impl FnOnce(&Batch, &EmbeddingClassifier, &TokenBatch, &Tensor)) {
    let (model, b) = model();
    let logits = |e: &Tensor| model.logits_from_embeddings(e, &b.mask);
    let task = |z: &Tensor| candle_nn::loss::cross_entropy(z, &b.labels);
    let embeddings = model.embed(&b.ids).unwrap();
    let target = Target::embedding_output(&embeddings, Some(&b.mask)).unwrap();
    check(
        &Batch::with_outputs(&target, &logits, &task),
        &model,
        &b,
        &embeddings,
    );
}

fn loss_of(step: &Step) -> f64 {
    step.loss.to_scalar::<f64>().unwrap()
}

/// `method.with(regulariser)` against the method's step plus the penalty's own gradient, with the
/// random draws in the same order.
fn check_sum_of_parts<M, R>(name: &str, method: M, regulariser: R)
where
    M: Method + Clone,
    R: Regulariser + Clone,
{
    on_a_batch(|batch, model, _, _| {
        let vars: Vec<Var> = model.vars();
        let composed = method
            .clone()
            .with(regulariser.clone())
            .step(batch, &mut Rng::new(11))
            .unwrap();
        let mut rng = Rng::new(11);
        let part = method.clone().step(batch, &mut rng).unwrap();
        let penalty = regulariser.penalty(batch, &mut rng).unwrap();
        let penalty_grads = penalty.value.backward().unwrap();
        let expected = (flat_gradient(&vars, &part.grads).unwrap()
            + flat_gradient(&vars, &penalty_grads).unwrap())
        .unwrap();
        let got = flat_gradient(&vars, &composed.grads).unwrap();
        let e = relative_error(&got, &expected).unwrap();
        assert!(e < 1e-13, "{name}: gradient differs by {e:e}");
        let value = penalty.value.to_scalar::<f64>().unwrap();
        assert!(value.is_finite() && value != 0.0, "{name}: penalty {value}");
        assert!(
            (loss_of(&composed) - (loss_of(&part) + value)).abs() < 1e-12,
            "{name}"
        );
        assert_eq!(
            composed.passes.forward,
            part.passes.forward + penalty.passes.forward,
            "{name}"
        );
    });
}

#[test]
fn a_composed_step_is_the_sum_of_its_parts() {
    let vat = Vat::new(0.5).unwrap();
    check_sum_of_parts("FGM + VAT", Fgm::new(0.5).unwrap(), vat);
    check_sum_of_parts(
        "FGM + label smoothing",
        Fgm::new(0.5).unwrap(),
        LabelSmoothing::default(),
    );
    check_sum_of_parts(
        "plain + SMART",
        Plain,
        Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap(),
    );
    check_sum_of_parts(
        "plain + gradient penalty",
        Plain,
        GradientPenalty::new(0.5).unwrap(),
    );
    check_sum_of_parts(
        "FGM + Laplacian",
        Fgm::new(0.5).unwrap(),
        Laplacian::new(0.3).unwrap(),
    );
    check_sum_of_parts(
        "plain + target shift",
        Plain,
        TargetShift::new(0.3, Divergence::SquaredError).unwrap(),
    );
}

#[test]
fn plain_training_plus_a_regulariser_is_the_regularising_methods_own_step() {
    on_a_batch(|batch, model, _, _| {
        let vars = model.vars();
        // (name, plain training plus the regulariser, the regularising method's own step)
        type Pair = (&'static str, Box<dyn Method>, Box<dyn Method>);
        let pairs: Vec<Pair> = vec![
            (
                "gradient penalty",
                Box::new(Plain.with(GradientPenalty::new(0.5).unwrap())),
                Box::new(GradientPenalty::new(0.5).unwrap()),
            ),
            (
                "VAT",
                Box::new(Plain.with(Vat::new(0.5).unwrap())),
                Box::new(Vat::new(0.5).unwrap()),
            ),
            (
                "SMART",
                Box::new(Plain.with(Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap())),
                Box::new(Smart::new(1.0, SmartDivergence::SymmetricKl).unwrap()),
            ),
            (
                "Laplacian",
                Box::new(Plain.with(Laplacian::new(0.3).unwrap())),
                Box::new(Laplacian::new(0.3).unwrap()),
            ),
            (
                "target shift",
                // Squared error: the KL form needs probability outputs, and these are logits.
                Box::new(Plain.with(TargetShift::new(0.3, Divergence::SquaredError).unwrap())),
                Box::new(TargetShift::new(0.3, Divergence::SquaredError).unwrap()),
            ),
        ];
        for (name, mut composed, mut own) in pairs {
            let a = composed.step(batch, &mut Rng::new(2)).unwrap();
            let b = own.step(batch, &mut Rng::new(2)).unwrap();
            let e = relative_error(
                &flat_gradient(&vars, &a.grads).unwrap(),
                &flat_gradient(&vars, &b.grads).unwrap(),
            )
            .unwrap();
            assert!(e < 1e-12, "{name}: {e:e}");
            assert!((loss_of(&a) - loss_of(&b)).abs() < 1e-12, "{name}");
        }
    });
}

#[test]
fn label_smoothing_as_a_penalty_is_the_cross_entropy_against_smoothed_labels() {
    on_a_batch(|batch, model, b, embeddings| {
        let alpha = 0.2;
        let step = Plain
            .with(LabelSmoothing::new(alpha).unwrap())
            .step(batch, &mut Rng::new(0))
            .unwrap();
        let soft = advtrain::noise::label_smoothing(&b.labels, 3, alpha, DType::F64).unwrap();
        let direct = advtrain::ops::soft_cross_entropy(
            &model.logits_from_embeddings(embeddings, &b.mask).unwrap(),
            &soft,
        )
        .unwrap();
        assert!((loss_of(&step) - direct.to_scalar::<f64>().unwrap()).abs() < 1e-12);
        let vars = model.vars();
        let e = relative_error(
            &flat_gradient(&vars, &step.grads).unwrap(),
            &flat_gradient(&vars, &direct.backward().unwrap()).unwrap(),
        )
        .unwrap();
        assert!(e < 1e-12, "{e:e}");
        assert!(matches!(
            LabelSmoothing::new(1.5),
            Err(Error::InvalidArgument {
                name: "smoothing",
                ..
            })
        ));
    });
}

//! The toy models and problems (src/toy.rs).

use advtrain::toy::{Activation, EmbeddingClassifier, Mlp, Setup, problem};
use advtrain::verify::scalar;
use advtrain::{Error, Rng};
use candle_core::{DType, Device};

#[test]
fn problems_build_and_have_finite_losses() {
    for setup in [
        Setup::MlpInput,
        Setup::EmbeddingOutput,
        Setup::EmbeddingMatrix,
    ] {
        let p = problem(setup, 1).unwrap();
        let l = scalar(&p.target.loss(&p.loss).unwrap()).unwrap();
        assert!(l.is_finite() && l > 0.0, "{setup:?}: {l}");
        assert!(!p.vars.is_empty());
    }
}

#[test]
fn batches_have_at_least_one_token_per_sentence_and_valid_labels() {
    let model = EmbeddingClassifier::new(20, 4, 3, 1, DType::F64, &Device::Cpu).unwrap();
    let batch = model.batch(50, 6, 3, &mut Rng::new(2)).unwrap();
    let mask: Vec<Vec<f64>> = batch.mask.to_vec2().unwrap();
    let ids: Vec<Vec<u32>> = batch.ids.to_vec2().unwrap();
    for (m, i) in mask.iter().zip(&ids) {
        assert!(m[0] == 1.0);
        for (mm, ii) in m.iter().zip(i) {
            assert_eq!(
                *mm == 0.0,
                *ii == 0,
                "padding is token 0 exactly where masked"
            );
        }
    }
    assert!(
        batch
            .labels
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .all(|l| *l < 3)
    );
}

#[test]
fn padding_does_not_change_the_prediction() {
    let model = EmbeddingClassifier::new(20, 4, 3, 1, DType::F64, &Device::Cpu).unwrap();
    let short = candle_core::Tensor::new(&[[3u32, 7]], &Device::Cpu).unwrap();
    let long = candle_core::Tensor::new(&[[3u32, 7, 0, 0]], &Device::Cpu).unwrap();
    let m_short = candle_core::Tensor::new(&[[1.0f64, 1.0]], &Device::Cpu).unwrap();
    let m_long = candle_core::Tensor::new(&[[1.0f64, 1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let a = model
        .logits_from_embeddings(&model.embed(&short).unwrap(), &m_short)
        .unwrap();
    let b = model
        .logits_from_embeddings(&model.embed(&long).unwrap(), &m_long)
        .unwrap();
    assert!(advtrain::verify::relative_error(&a, &b).unwrap() < 1e-12);
}

#[test]
fn bad_dims_are_errors() {
    assert!(matches!(
        Mlp::new(&[4], Activation::Tanh, 0, DType::F64, &Device::Cpu),
        Err(Error::InvalidArgument { name: "dims", .. })
    ));
    assert!(matches!(
        Mlp::new(&[4, 0, 2], Activation::Relu, 0, DType::F64, &Device::Cpu),
        Err(Error::InvalidArgument { name: "dims", .. })
    ));
}

//! The trainable models (`src/models/`): the BERT-family classifier's gradients with respect to its
//! embedding output and every weight match finite differences in f64, to second order (Hutchinson's
//! Hessian-vector product and gradient penalty's weight gradient through the whole encoder); padding
//! does not change a sentence; a model saved in the Hugging Face layout loads back to the same
//! outputs (also with a `bert.` prefix and `gamma`/`beta` layer norms); every unsupported config and
//! malformed checkpoint is an error naming the key, tensor or file; the CNN differentiates to second
//! order and spectral normalisation bounds it.

use advtrain::models::{Activation, BertClassifier, BertConfig, Cnn, Head, Pooling};
use advtrain::verify::{gradcheck, gradcheck_second_order, relative_error, weight_gradcheck};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

fn tiny_config() -> BertConfig {
    BertConfig {
        hidden_size: 8,
        num_attention_heads: 2,
        intermediate_size: 12,
        ..BertConfig::small(30, 10)
    }
}

fn tiny(pooling: Pooling) -> BertClassifier {
    let head = Head {
        classes: 3,
        pooling,
    };
    BertClassifier::new(tiny_config(), head, 3, DType::F64, &Device::Cpu).unwrap()
}

/// Two sentences, the second padded, as `(ids, mask, labels)`.
fn batch() -> (Tensor, Tensor, Tensor) {
    let ids = Tensor::new(&[[1u32, 4, 9, 2], [1, 7, 2, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f64, 1., 1., 1.], [1., 1., 1., 0.]], &Device::Cpu).unwrap();
    (ids, mask, Tensor::new(&[2u32, 0], &Device::Cpu).unwrap())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("advtrain-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_embedding_output_gradient_matches_finite_differences() {
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let model = tiny(pooling);
        let (ids, mask, labels) = batch();
        let e = model.embed(&ids).unwrap();
        let loss = |e: &Tensor| {
            advtrain::fused::cross_entropy(&model.logits_from_embeddings(e, &mask)?, &labels)
        };
        let check = gradcheck(loss, &e, 1e-5).unwrap();
        assert!(check.norm > 1e-3, "{pooling:?}: norm {}", check.norm);
        assert!(
            check.relative_error < 1e-6,
            "{pooling:?}: {}",
            check.relative_error
        );
    }
}

#[test]
fn every_weight_gets_its_true_gradient() {
    let model = tiny(Pooling::Mean);
    model.mode.set_train(true);
    let (ids, mask, labels) = batch();
    let objective = || -> advtrain::Result<Tensor> {
        Ok(advtrain::fused::cross_entropy(
            &model.logits(&ids, &mask)?,
            &labels,
        )?)
    };
    let grads = objective().unwrap().backward().unwrap();
    let vars = model.vars();
    // Every weight, the embedding tables and every layer norm included: no op drops the gradient.
    assert_eq!(vars.len(), 3 + 2 + 2 * 16 + 2);
    assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()));
    let check = weight_gradcheck(
        &vars,
        &grads,
        || advtrain::verify::scalar(&objective()?),
        2,
        1e-5,
    )
    .unwrap();
    assert!(check.relative_error < 1e-6, "{}", check.relative_error);
}

#[test]
fn hessian_vector_products_through_the_encoder_match_finite_differences() {
    assert!(
        advtrain::second_order::is_enabled(),
        "run the tests through cargo: .cargo/config.toml sets CANDLE_GRAD_DO_NOT_DETACH=1"
    );
    let model = tiny(Pooling::Cls);
    let (ids, mask, labels) = batch();
    let e = model.embed(&ids).unwrap().detach();
    let loss = |e: &Tensor| {
        advtrain::fused::cross_entropy(&model.logits_from_embeddings(e, &mask)?, &labels)
    };
    let v = advtrain::Rng::new(7)
        .rademacher(e.dims(), DType::F64, &Device::Cpu)
        .unwrap();
    // The embeddings are small (N(0, 0.02^2)), so the layer norm behind them has large higher
    // derivatives: the central difference converges as h^2 from a large constant. Fit the order.
    let steps = advtrain::verify::log_spaced(1e-6, 1e-4, 5);
    let errors: Vec<f64> = steps
        .iter()
        .map(|&h| {
            gradcheck_second_order(loss, &e, &v, h)
                .unwrap()
                .relative_error
        })
        .collect();
    assert_second_order_convergence(&steps, &errors);
}

/// Central differences: the error falls as h^2 down to below 1e-7.
fn assert_second_order_convergence(steps: &[f64], errors: &[f64]) {
    let fit = advtrain::verify::fit_order(steps, errors).unwrap();
    assert!(
        (fit.slope - 2.0).abs() < 0.1 && fit.r_squared > 0.999,
        "slope {} (r^2 {}) over errors {errors:?}",
        fit.slope,
        fit.r_squared
    );
    assert!(errors[0] < 1e-7, "{errors:?}");
}

#[test]
fn gradient_penalty_differentiates_through_every_weight() {
    assert!(advtrain::second_order::is_enabled());
    let model = tiny(Pooling::Mean);
    let (ids, mask, labels) = batch();
    // L + ||grad_e L||^2: its weight gradient needs the backward pass of the backward pass.
    let objective = || -> advtrain::Result<Tensor> {
        let e = candle_core::Var::from_tensor(&model.embed(&ids)?)?;
        let loss =
            advtrain::fused::cross_entropy(&model.logits_from_embeddings(&e, &mask)?, &labels)?;
        let grad = loss
            .backward()?
            .remove(e.as_tensor())
            .expect("e has a gradient");
        Ok((loss + grad.sqr()?.sum_all()?)?)
    };
    let grads = objective().unwrap().backward().unwrap();
    let vars = model.vars();
    let steps = advtrain::verify::log_spaced(1e-6, 1e-4, 5);
    let errors: Vec<f64> = steps
        .iter()
        .map(|&h| {
            let check = weight_gradcheck(
                &vars,
                &grads,
                || advtrain::verify::scalar(&objective()?),
                2,
                h,
            )
            .unwrap();
            assert!(check.norm > 1.0, "norm {}", check.norm);
            check.relative_error
        })
        .collect();
    assert_second_order_convergence(&steps, &errors);
}

#[test]
fn padding_does_not_change_a_sentence() {
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let model = tiny(pooling);
        let alone = model
            .logits(
                &Tensor::new(&[[1u32, 7, 2]], &Device::Cpu).unwrap(),
                &Tensor::ones((1, 3), DType::F64, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let (ids, mask, _) = batch();
        let padded = model.logits(&ids, &mask).unwrap().narrow(0, 1, 1).unwrap();
        let error = relative_error(&alone, &padded).unwrap();
        assert!(error < 1e-12, "{pooling:?}: {error}");
    }
}

#[test]
fn the_matrix_target_and_the_output_target_see_the_same_model() {
    let model = tiny(Pooling::Cls);
    let (ids, mask, _) = batch();
    let by_matrix = model
        .embed_with(model.word_embeddings().as_tensor(), &ids)
        .unwrap();
    let by_lookup = model.embed(&ids).unwrap();
    assert_eq!(
        by_matrix.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        by_lookup.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    );
    // A constant shift of every coordinate would vanish in the embedding layer norm: shift at random.
    let noise = advtrain::Rng::new(3)
        .normal((30, 8), DType::F64, &Device::Cpu)
        .unwrap();
    let shifted = (model.word_embeddings().as_tensor() + (noise * 0.1).unwrap()).unwrap();
    let a = model
        .logits_from_embeddings(&model.embed_with(&shifted, &ids).unwrap(), &mask)
        .unwrap();
    let b = model.logits(&ids, &mask).unwrap();
    assert!(relative_error(&a, &b).unwrap() > 1e-3);
}

#[test]
fn a_saved_model_loads_back_to_the_same_outputs() {
    let dir = scratch("round-trip");
    let head = Head {
        classes: 3,
        pooling: Pooling::Mean,
    };
    let model = BertClassifier::new(tiny_config(), head, 11, DType::F64, &Device::Cpu).unwrap();
    model.save_pretrained(&dir).unwrap();
    // Another seed: every value must come from the files.
    let (back, loaded) =
        BertClassifier::from_pretrained(&dir, head, 12, DType::F64, &Device::Cpu).unwrap();
    assert_eq!(back.config(), model.config());
    assert_eq!(loaded.encoder, 3 + 2 + 2 * 16);
    assert!(loaded.head);
    assert_eq!(loaded.unused, 0);
    let (ids, mask, _) = batch();
    let before = model.logits(&ids, &mask).unwrap();
    let after = back.logits(&ids, &mask).unwrap();
    assert_eq!(
        before.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        after.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    );
    // A head of another size keeps its seeded values; the encoder still loads.
    let other = Head {
        classes: 5,
        pooling: Pooling::Mean,
    };
    let (_, loaded) =
        BertClassifier::from_pretrained(&dir, other, 12, DType::F32, &Device::Cpu).unwrap();
    assert!(!loaded.head);
    assert_eq!(loaded.unused, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prefixed_checkpoint_with_gamma_and_beta_layer_norms_loads() {
    let dir = scratch("prefixed");
    let head = Head {
        classes: 3,
        pooling: Pooling::Cls,
    };
    let model = BertClassifier::new(tiny_config(), head, 11, DType::F64, &Device::Cpu).unwrap();
    model.save_pretrained(&dir).unwrap();
    // Rename as the original BERT checkpoints name their tensors, and add a pooler nobody uses.
    let weights = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .drain()
        .map(|(name, t)| {
            let name = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            let name = if name.starts_with("classifier.") {
                name
            } else {
                format!("bert.{name}")
            };
            (name, t.to_dtype(DType::F32).unwrap())
        })
        .chain([(
            "bert.pooler.dense.bias".to_string(),
            Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
        )])
        .collect();
    candle_core::safetensors::save(&renamed, &weights).unwrap();
    let (back, loaded) =
        BertClassifier::from_pretrained(&dir, head, 12, DType::F64, &Device::Cpu).unwrap();
    assert!(loaded.head);
    assert_eq!(loaded.unused, 1);
    let (ids, mask, _) = batch();
    // Stored as f32: equal to f32 precision.
    let error = relative_error(
        &model.logits(&ids, &mask).unwrap(),
        &back.logits(&ids, &mask).unwrap(),
    )
    .unwrap();
    assert!(error < 1e-5, "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn roberta_positions_start_after_the_padding_index() {
    let config = BertConfig {
        model_type: "roberta".into(),
        pad_token_id: 1,
        max_position_embeddings: 12,
        ..tiny_config()
    };
    assert_eq!(config.position_offset(), 2);
    assert_eq!(config.max_tokens(), 10);
    let json = config.to_json();
    let back = BertConfig::from_json(&json, "test").unwrap();
    assert_eq!(back, config);
    let head = Head {
        classes: 2,
        pooling: Pooling::Cls,
    };
    let model = BertClassifier::new(config, head, 1, DType::F64, &Device::Cpu).unwrap();
    let ids = Tensor::zeros((1, 11), DType::U32, &Device::Cpu).unwrap();
    let error = model.embed(&ids).unwrap_err().to_string();
    assert!(error.contains("at most 10 tokens"), "{error}");
}

fn config_error(edit: impl Fn(&mut serde_json::Value)) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&tiny_config().to_json()).unwrap();
    edit(&mut value);
    BertConfig::from_json(&value.to_string(), "dir/config.json")
        .unwrap_err()
        .to_string()
}

#[test]
fn an_unsupported_config_is_an_error_naming_the_key() {
    let object = |v: &mut serde_json::Value| v.as_object_mut().unwrap().clone();
    for (key, edit, says) in [
        (
            "hidden_act",
            Box::new(|v: &mut serde_json::Value| v["hidden_act"] = "relu".into())
                as Box<dyn Fn(&mut serde_json::Value)>,
            "not supported",
        ),
        (
            "position_embedding_type",
            Box::new(|v: &mut serde_json::Value| {
                v["position_embedding_type"] = "relative_key".into()
            }),
            "absolute only",
        ),
        (
            "model_type",
            Box::new(|v: &mut serde_json::Value| v["model_type"] = "distilbert".into()),
            "not supported",
        ),
        (
            "hidden_size",
            Box::new(move |v: &mut serde_json::Value| {
                let mut o = object(v);
                o.remove("hidden_size");
                *v = serde_json::Value::Object(o);
            }),
            "missing",
        ),
        (
            "num_hidden_layers",
            Box::new(|v: &mut serde_json::Value| v["num_hidden_layers"] = "six".into()),
            "not a whole number",
        ),
    ] {
        let error = config_error(edit);
        assert!(
            error.contains("dir/config.json") && error.contains(key) && error.contains(says),
            "{key}: {error}"
        );
    }
    let error = config_error(|v| v["num_attention_heads"] = 3.into());
    assert!(error.contains("num_attention_heads"), "{error}");
    let error = BertConfig::from_json("{ not json", "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("c.json:1") && error.contains("not JSON"),
        "{error}"
    );
    // The tanh GELU names read as one activation.
    for name in ["gelu_new", "gelu_fast", "gelu_pytorch_tanh"] {
        let mut value: serde_json::Value = serde_json::from_str(&tiny_config().to_json()).unwrap();
        value["hidden_act"] = name.into();
        let config = BertConfig::from_json(&value.to_string(), "c").unwrap();
        assert_eq!(config.hidden_act, Activation::GeluTanh);
    }
}

#[test]
fn a_malformed_checkpoint_is_an_error_naming_the_tensor_or_file() {
    let dir = scratch("malformed");
    let head = Head {
        classes: 3,
        pooling: Pooling::Cls,
    };
    let load = |dir: &std::path::Path| {
        BertClassifier::from_pretrained(dir, head, 0, DType::F64, &Device::Cpu)
            .err()
            .expect("loading fails")
            .to_string()
    };
    let error = load(&dir);
    assert!(
        error.contains("config.json") && error.contains("missing"),
        "{error}"
    );
    let model = BertClassifier::new(tiny_config(), head, 1, DType::F64, &Device::Cpu).unwrap();
    model.save_pretrained(&dir).unwrap();
    let weights = dir.join("model.safetensors");
    let all = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let rewrite = |edit: &dyn Fn(&mut std::collections::HashMap<String, Tensor>)| {
        let mut tensors = all.clone();
        edit(&mut tensors);
        candle_core::safetensors::save(&tensors, &weights).unwrap();
        load(&dir)
    };
    let missing = "encoder.layer.1.output.dense.weight";
    let error = rewrite(&|t| {
        t.remove(missing);
    });
    assert!(
        error.contains(missing) && error.contains("no tensor"),
        "{error}"
    );
    let error = rewrite(&|t| {
        t.insert(
            missing.into(),
            Tensor::zeros((8, 13), DType::F64, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        error.contains(missing) && error.contains("[8, 13]"),
        "{error}"
    );
    std::fs::write(&weights, b"not safetensors").unwrap();
    let error = load(&dir);
    assert!(
        error.contains("model.safetensors") && error.contains("cannot read"),
        "{error}"
    );
    std::fs::remove_file(&weights).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"").unwrap();
    let error = load(&dir);
    assert!(error.contains("safe_serialization"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_ids_and_masks_are_clear_errors() {
    let model = tiny(Pooling::Mean);
    let (ids, mask, _) = batch();
    let outside = Tensor::new(&[[1u32, 30]], &Device::Cpu).unwrap();
    let error = model.embed(&outside).unwrap_err().to_string();
    assert!(
        error.contains("token id 30") && error.contains("tokenizer"),
        "{error}"
    );
    let error = model
        .logits(&ids, &mask.narrow(1, 0, 3).unwrap())
        .unwrap_err()
        .to_string();
    assert!(error.contains("mask"), "{error}");
    let error = model
        .logits(&ids, &mask.to_dtype(DType::F32).unwrap())
        .unwrap_err()
        .to_string();
    assert!(error.contains("dtype mismatch for `mask`"), "{error}");
    let empty = Tensor::zeros((0, 4), DType::U32, &Device::Cpu).unwrap();
    assert!(model.embed(&empty).is_err());
}

#[test]
fn spectral_normalisation_changes_the_constrained_layers_only_and_keeps_gradients() {
    let plain = tiny(Pooling::Mean);
    let model = tiny(Pooling::Mean)
        .spectrally_normalised(&mut advtrain::Rng::new(1))
        .unwrap();
    let (ids, mask, _) = batch();
    let e = model.embed(&ids).unwrap();
    // Same seed, so only the normalisation differs.
    let a = model.logits_from_embeddings(&e, &mask).unwrap();
    let b = plain.logits_from_embeddings(&e, &mask).unwrap();
    assert!(relative_error(&a, &b).unwrap() > 1e-3);
    let loss = |e: &Tensor| model.logits_from_embeddings(e, &mask)?.sum_all();
    assert!(gradcheck(loss, &e, 1e-5).unwrap().relative_error < 1e-6);
}

fn pixels(b: usize) -> Tensor {
    advtrain::Rng::new(4)
        .uniform(0.0, 1.0, (b, 784), DType::F64, &Device::Cpu)
        .unwrap()
}

#[test]
fn the_cnn_input_gradients_match_finite_differences_to_second_order() {
    assert!(advtrain::second_order::is_enabled());
    let model = Cnn::new(1, 10, DType::F64, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[3u32, 8], &Device::Cpu).unwrap();
    let loss = |x: &Tensor| advtrain::fused::cross_entropy(&model.logits(x)?, &labels);
    let x = pixels(2);
    let first = gradcheck(loss, &x, 1e-5).unwrap();
    assert!(first.relative_error < 1e-6, "{}", first.relative_error);
    let v = advtrain::Rng::new(5)
        .rademacher((2, 784), DType::F64, &Device::Cpu)
        .unwrap();
    let second = gradcheck_second_order(loss, &x, &v, 1e-4).unwrap();
    assert!(second.relative_error < 1e-5, "{}", second.relative_error);
}

#[test]
fn the_cnn_refuses_other_image_sizes() {
    let model = Cnn::new(1, 10, DType::F64, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 32 * 32), DType::F64, &Device::Cpu).unwrap();
    let error = model.logits(&x).unwrap_err().to_string();
    assert!(error.contains("28 x 28"), "{error}");
    assert!(Cnn::new(1, 0, DType::F64, &Device::Cpu).is_err());
}

#[test]
fn spectral_normalisation_bounds_the_cnn() {
    let model = Cnn::new(1, 10, DType::F64, &Device::Cpu)
        .unwrap()
        .spectrally_normalised(&mut advtrain::Rng::new(2))
        .unwrap();
    model.mode.set_train(true);
    for _ in 0..20 {
        model.logits(&pixels(1)).unwrap(); // power iterations advance in training mode
    }
    model.mode.set_train(false);
    // ||f(x) - f(y)|| <= L ||x - y||: GELU is 1.13-Lipschitz; the convolutions' norms are bounded by the
    // normalised kernels times the number of overlapping windows (at most 3 x 3 with stride 2).
    let x = pixels(1);
    let y = (&x + 0.01).unwrap();
    let change = advtrain::verify::l2_norm(
        &(model.logits(&x).unwrap() - model.logits(&y).unwrap()).unwrap(),
    )
    .unwrap();
    let distance = advtrain::verify::l2_norm(&(&x - &y).unwrap()).unwrap();
    let bound = 1.13f64.powi(2) * 3.0 * 3.0;
    assert!(
        change / distance <= bound,
        "{} > {bound}",
        change / distance
    );
    assert!(change > 0.0);
}

/// `(loss, v^T H v)` by the jet form and by double backward of the ordinary loss.
fn both_curvatures(
    target: &advtrain::Target,
    loss: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    jet: &dyn Fn(&advtrain::Jet) -> candle_core::Result<advtrain::Jet>,
) -> [(f64, f64); 2] {
    use advtrain::laplacian::{self, CurvatureMethod, ProbeKind};
    let v = ProbeKind::Rademacher
        .sample(target, &mut advtrain::Rng::new(8))
        .unwrap();
    let value = |t: Tensor| t.to_scalar::<f64>().unwrap();
    let exact = laplacian::curvature(target, loss, &v, CurvatureMethod::DoubleBackward).unwrap();
    let taylor = laplacian::jet_curvature(target, jet, &v).unwrap();
    let out = jet(&advtrain::Jet::new(target.point(), &v).unwrap()).unwrap();
    [
        (
            value(out.primal().clone()),
            value(target.loss(loss).unwrap()),
        ),
        (value(taylor), value(exact)),
    ]
}

#[test]
fn the_models_jet_forms_match_double_backward() {
    let (ids, mask, labels) = batch();
    let mut gelu_tanh = tiny_config();
    gelu_tanh.hidden_act = Activation::GeluTanh;
    let head = |pooling| Head {
        classes: 3,
        pooling,
    };
    let models = [
        tiny(Pooling::Mean),
        tiny(Pooling::Cls),
        BertClassifier::new(gelu_tanh, head(Pooling::Mean), 5, DType::F64, &Device::Cpu).unwrap(),
    ];
    for (i, model) in models.iter().enumerate() {
        let e = model.embed(&ids).unwrap();
        let target = advtrain::Target::embedding_output(&e, Some(&mask)).unwrap();
        let loss = |e: &Tensor| {
            advtrain::fused::cross_entropy(&model.logits_from_embeddings(e, &mask)?, &labels)
        };
        let jet = |e: &advtrain::Jet| {
            model
                .logits_from_embeddings_jet(e, &mask)?
                .cross_entropy(&labels)
        };
        for (taylor, exact) in both_curvatures(&target, &loss, &jet) {
            let error = (taylor - exact).abs() / exact.abs();
            assert!(
                error < 1e-12,
                "BERT {i}: {taylor} against {exact} ({error:e})"
            );
        }
    }
    let cnn = Cnn::new(1, 10, DType::F64, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[3u32, 8], &Device::Cpu).unwrap();
    let x = pixels(2);
    let loss = |x: &Tensor| advtrain::fused::cross_entropy(&cnn.logits(x)?, &labels);
    let jet = |x: &advtrain::Jet| cnn.logits_jet(x)?.cross_entropy(&labels);
    let target = advtrain::Target::input(&x).unwrap();
    for (taylor, exact) in both_curvatures(&target, &loss, &jet) {
        let error = (taylor - exact).abs() / exact.abs();
        assert!(error < 1e-12, "CNN: {taylor} against {exact} ({error:e})");
    }
}

/// The encoder looks its words up with `fused::embedding`: a training step (plain, FGM, gradient
/// penalty) gives the word-embedding matrix the same gradient as through candle's `index_select`,
/// whose backward computes it in every pass.
#[test]
fn the_fused_lookup_gives_every_method_the_matrix_gradient_of_index_select() {
    use advtrain::{Batch, Fgm, GradientPenalty, Method, Plain, Rng, Target};
    let model = tiny(Pooling::Mean);
    let (ids, mask, labels) = batch();
    let matrix = model.word_embeddings().as_tensor();
    let loss = |e: &Tensor| {
        advtrain::fused::cross_entropy(&model.logits_from_embeddings(e, &mask)?, &labels)
    };
    let through_candle = matrix
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((2, 4, 8))
        .unwrap();
    let methods: [(&str, Box<dyn Method>); 3] = [
        ("plain", Box::new(Plain)),
        ("fgm", Box::new(Fgm::new(0.3).unwrap())),
        (
            "gradient penalty",
            Box::new(GradientPenalty::new(0.3).unwrap()),
        ),
    ];
    for (name, mut method) in methods {
        let mut step = |e: &Tensor| {
            let target = Target::embedding_output(e, Some(&mask)).unwrap();
            let step = method
                .step(&Batch::new(&target, &loss), &mut Rng::new(0))
                .unwrap();
            step.grads
                .get(matrix)
                .expect("the matrix's gradient")
                .clone()
        };
        let ours = step(&model.embed(&ids).unwrap());
        let theirs = step(&through_candle);
        let error = relative_error(&ours, &theirs).unwrap();
        assert!(error < 1e-14, "{name}: {error:e}");
    }
}

#[test]
fn negative_ids_empty_mask_rows_and_long_inputs_are_errors() {
    let model = tiny(Pooling::Mean);
    let negative = Tensor::new(&[[1i64, -1]], &Device::Cpu).unwrap();
    let text = model.embed(&negative).unwrap_err().to_string();
    assert!(text.contains("`ids`") && text.contains("-1"), "{text}");
    let (ids, _, _) = batch();
    let e = model.embed(&ids).unwrap();
    let empty_row = Tensor::new(&[[1f64, 1., 1., 1.], [0., 0., 0., 0.]], &Device::Cpu).unwrap();
    let text = model.hidden_states(&e, &empty_row).unwrap_err().to_string();
    assert!(text.contains("mask") && text.contains("row 1"), "{text}");
    // Longer than the position embeddings (10 in the tiny config).
    let long = Tensor::zeros((1, 11, 8), DType::F64, &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 11), DType::F64, &Device::Cpu).unwrap();
    let text = model.hidden_states(&long, &mask).unwrap_err().to_string();
    assert!(text.contains("`e`") && text.contains("10 tokens"), "{text}");
}

#[test]
fn a_pad_token_id_at_the_integer_limit_is_an_error_not_an_overflow() {
    let config = BertConfig {
        model_type: "roberta".into(),
        pad_token_id: usize::MAX,
        ..tiny_config()
    };
    let text = config.validate().unwrap_err().to_string();
    assert!(text.contains("max_position_embeddings"), "{text}");
}

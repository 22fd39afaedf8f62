//! Gradient checks, first and second order, of every op the library relies on (src/ops.rs and the
//! candle ops used by the methods and toy models), against central finite differences in f64.

use advtrain::ops::{
    LayerNorm, layer_norm, log_softmax_last_dim, soft_cross_entropy, softmax_last_dim,
};
use advtrain::verify::{gradcheck, gradcheck_second_order, relative_error};
use advtrain::{Rng, Scope, StepNorm, Target};
use candle_core::{D, DType, Device, Module, Tensor};

type Op = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

fn ops() -> Vec<(&'static str, Op, f64)> {
    let mut rng = Rng::new(1);
    let d = Device::Cpu;
    let w = rng.normal(5, DType::F64, &d).unwrap();
    let b = rng.normal(5, DType::F64, &d).unwrap();
    let mix = rng.normal((3, 5), DType::F64, &d).unwrap();
    let soft = candle_nn::ops::softmax(&rng.normal((3, 5), DType::F64, &d).unwrap(), 1).unwrap();
    let labels = Tensor::new(&[0u32, 3, 4], &d).unwrap();
    let ids = Tensor::new(&[1u32, 3, 3, 6], &d).unwrap();
    let target_rows = Target::input(&Tensor::zeros((3, 5), DType::F64, &d).unwrap()).unwrap();
    let (w1, b1, mix1, mix2, mix3, mix4, mix5, mix6, mix7, mix8) = (
        w.clone(),
        b.clone(),
        mix.clone(),
        mix.clone(),
        mix.clone(),
        mix.clone(),
        mix.clone(),
        mix.clone(),
        mix.clone(),
        mix.clone(),
    );
    let (t1, t2, t3) = (target_rows.clone(), target_rows.clone(), target_rows);
    vec![
        (
            "layer_norm",
            Box::new(move |x: &Tensor| {
                (layer_norm(x, Some(&w1), Some(&b1), 1e-5)? * &mix1)?.sum_all()
            }) as Op,
            1e-8,
        ),
        (
            "LayerNorm module",
            Box::new(move |x: &Tensor| {
                (LayerNorm::new(w.clone(), b.clone(), 1e-5).forward(x)? * &mix2)?.sum_all()
            }),
            1e-8,
        ),
        (
            "softmax_last_dim",
            Box::new(move |x: &Tensor| (softmax_last_dim(x)? * &mix3)?.sum_all()),
            1e-8,
        ),
        (
            "log_softmax_last_dim",
            Box::new(move |x: &Tensor| (log_softmax_last_dim(x)? * &mix4)?.sum_all()),
            1e-8,
        ),
        (
            "soft_cross_entropy",
            Box::new(move |x: &Tensor| soft_cross_entropy(x, &soft)),
            1e-8,
        ),
        (
            "cross_entropy",
            Box::new(move |x: &Tensor| candle_nn::loss::cross_entropy(x, &labels)),
            1e-8,
        ),
        (
            "mse",
            Box::new(move |x: &Tensor| candle_nn::loss::mse(&x.tanh()?, &mix5)),
            1e-8,
        ),
        (
            "tanh",
            Box::new(move |x: &Tensor| (x.tanh()? * &mix6)?.sum_all()),
            1e-8,
        ),
        // candle's GELU backward uses constants rounded to 6 digits: relative error ~2e-7 by design.
        (
            "gelu_erf",
            Box::new(move |x: &Tensor| (x.gelu_erf()? * &mix7)?.sum_all()),
            1e-6,
        ),
        (
            "embedding lookup (index_select)",
            Box::new(move |m: &Tensor| m.index_select(&ids, 0)?.sqr()?.sum_all()),
            1e-8,
        ),
        (
            "L2 penalty (safe sqrt)",
            Box::new(move |g: &Tensor| Ok(StepNorm::L2(Scope::PerExample).penalty(&t1, g)?)),
            1e-8,
        ),
        (
            "L1 penalty (sign-held abs)",
            Box::new(move |g: &Tensor| Ok(StepNorm::Sign.penalty(&t2, g)?)),
            1e-8,
        ),
        (
            "raw penalty",
            Box::new(move |g: &Tensor| {
                StepNorm::Raw.penalty(&t3, &g.tanh()?)? + (g * &mix8)?.sum_all()?
            }),
            1e-8,
        ),
        (
            "normalise (maximum floor)",
            Box::new(|x: &Tensor| {
                let n = x.sqr()?.sum_all()?.sqrt()?.maximum(1e-12)?;
                x.broadcast_div(&n)?.sin()?.sum_all()
            }),
            1e-8,
        ),
    ]
}

fn point(name: &str) -> Tensor {
    let mut rng = Rng::new(2);
    if name.starts_with("embedding") {
        rng.normal((7, 5), DType::F64, &Device::Cpu).unwrap()
    } else {
        rng.normal((3, 5), DType::F64, &Device::Cpu).unwrap()
    }
}

#[test]
fn first_order_gradients_match_finite_differences() {
    for (name, f, tolerance) in ops() {
        let check = gradcheck(&f, &point(name), 1e-5).unwrap();
        assert!(
            check.norm > 0.0,
            "{name}: zero gradient, the check proves nothing"
        );
        assert!(check.relative_error < tolerance, "{name}: {check:?}");
    }
}

#[test]
fn second_order_gradients_match_finite_differences() {
    for (name, f, tolerance) in ops() {
        let x = point(name);
        let v = Rng::new(3)
            .normal(x.shape(), DType::F64, &Device::Cpu)
            .unwrap();
        let check = gradcheck_second_order(&f, &x, &v, 1e-4).unwrap();
        // The L1 penalty and the embedding lookup are piecewise linear / quadratic in x: H v may be 0.
        if !name.starts_with("L1") {
            assert!(check.norm > 0.0, "{name}: zero Hessian-vector product");
        }
        // Second differences carry O(h^2) = 1e-8 truncation on top of the first-order floor.
        assert!(
            check.relative_error < tolerance.max(1e-6),
            "{name}: {check:?}"
        );
    }
}

#[test]
fn layer_norm_matches_candles_fused_forward() {
    let mut rng = Rng::new(4);
    let x = rng.normal((2, 3, 8), DType::F32, &Device::Cpu).unwrap();
    let w = rng.normal(8, DType::F32, &Device::Cpu).unwrap();
    let b = rng.normal(8, DType::F32, &Device::Cpu).unwrap();
    let ours = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
    let fused = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap();
    assert!(relative_error(&ours, &fused).unwrap() < 1e-6);
    let soft = softmax_last_dim(&x).unwrap();
    let fused = candle_nn::ops::softmax_last_dim(&x).unwrap();
    assert!(relative_error(&soft, &fused).unwrap() < 1e-6);
    let sums: Vec<f32> = soft
        .sum(D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
}

#[test]
fn bad_arguments_are_errors() {
    let x = Tensor::ones((2, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(layer_norm(&x, None, None, 0.0).is_err());
    let y = Tensor::ones((2, 4), DType::F64, &Device::Cpu).unwrap();
    // The ops return candle's Result (they drop into Module::forward); the error names the argument.
    let e = soft_cross_entropy(&x, &y).unwrap_err().to_string();
    assert!(e.contains("shape mismatch for `targets`"), "{e}");
}

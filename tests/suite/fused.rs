//! Fused differentiable ops (src/fused/): each equals its composite form in value, gradient and
//! Hessian-vector product; first, second and third derivatives match finite differences in f64;
//! bad input is an error, not a panic.

use crate::values;
use advtrain::verify::{gradcheck, gradcheck_second_order, relative_error};
use advtrain::{Rng, Target};
use advtrain::{fused, ops};
use candle_core::{DType, Device, Tensor, Var};

type Op = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;
type ScalarFn = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

/// One fused op, its composite reference and the shape of its test input.
struct Case {
    name: &'static str,
    fused: Op,
    composite: Op,
    shape: (usize, usize),
}

fn labels() -> Tensor {
    Tensor::new(&[3u32, 0, 6, 6, 1], &Device::Cpu).unwrap()
}

/// A 7 -> 6 layer's weight and bias.
fn layer(dtype: DType) -> (Tensor, Tensor) {
    let mut rng = Rng::new(11);
    let w = (rng.normal((6, 7), DType::F64, &Device::Cpu).unwrap() * 0.4).unwrap();
    let b = (rng.normal(6, DType::F64, &Device::Cpu).unwrap() * 0.1).unwrap();
    (w.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap())
}

/// A 2 -> 3 channel, 3 x 3 convolution's kernel and bias.
fn conv_layer(dtype: DType) -> (Tensor, Tensor) {
    let mut rng = Rng::new(12);
    let k = (rng.normal((3, 2, 3, 3), DType::F64, &Device::Cpu).unwrap() * 0.3).unwrap();
    let b = (rng.normal(3, DType::F64, &Device::Cpu).unwrap() * 0.1).unwrap();
    (k.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap())
}

fn cases() -> Vec<Case> {
    let weight = Tensor::new(&[0.5f64, 1.5, -1.0, 2.0, 0.7, 1.1, -0.3], &Device::Cpu).unwrap();
    let bias = Tensor::new(&[0.1f64, -0.2, 0.3, 0.0, 0.5, -0.4, 0.2], &Device::Cpu).unwrap();
    let affine =
        |w: &Tensor, b: &Tensor, dtype| (w.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
    let (w1, b1) = (weight.clone(), bias.clone());
    let (w2, b2) = (weight, bias);
    vec![
        Case {
            name: "linear",
            // GELU after the layer: a linear map alone has no third derivative to check.
            fused: Box::new(|x| {
                let (w, b) = layer(x.dtype());
                fused::gelu_erf(&fused::linear(x, &w, Some(&b))?)
            }),
            composite: Box::new(|x| {
                let (w, b) = layer(x.dtype());
                ops::gelu_erf(&x.matmul(&w.t()?)?.broadcast_add(&b)?)
            }),
            shape: (5, 7),
        },
        Case {
            name: "gelu_erf",
            fused: Box::new(fused::gelu_erf),
            composite: Box::new(ops::gelu_erf),
            shape: (4, 25),
        },
        Case {
            name: "gelu_tanh",
            fused: Box::new(fused::gelu_tanh),
            composite: Box::new(ops::gelu_tanh),
            shape: (4, 25),
        },
        Case {
            name: "layer_norm",
            fused: Box::new(move |x| {
                let (w, b) = affine(&w1, &b1, x.dtype());
                fused::layer_norm(x, Some(&w), Some(&b), 1e-3)
            }),
            composite: Box::new(move |x| {
                let (w, b) = affine(&w2, &b2, x.dtype());
                advtrain::ops::layer_norm(x, Some(&w), Some(&b), 1e-3)
            }),
            shape: (5, 7),
        },
        Case {
            name: "softmax_last_dim",
            fused: Box::new(fused::softmax_last_dim),
            composite: Box::new(advtrain::ops::softmax_last_dim),
            shape: (5, 7),
        },
        Case {
            name: "log_softmax_last_dim",
            fused: Box::new(fused::log_softmax_last_dim),
            composite: Box::new(advtrain::ops::log_softmax_last_dim),
            shape: (5, 7),
        },
        Case {
            name: "conv2d",
            // Two 6 x 6 images of 2 channels, a 3 x 3 kernel to 3 channels at stride 2 with
            // padding 1, then GELU; candle's conv2d is the reference.
            fused: Box::new(|x| {
                let (k, b) = conv_layer(x.dtype());
                let y = fused::conv2d(&x.reshape((2, 2, 6, 6))?, &k, Some(&b), 2, 1)?;
                fused::gelu_erf(&y.flatten_from(1)?)
            }),
            composite: Box::new(|x| {
                let (k, b) = conv_layer(x.dtype());
                let y = x.reshape((2, 2, 6, 6))?.conv2d(&k, 1, 2, 1, 1)?;
                ops::gelu_erf(
                    &y.broadcast_add(&b.reshape((1, 3, 1, 1))?)?
                        .flatten_from(1)?,
                )
            }),
            shape: (2, 72),
        },
        Case {
            name: "attention",
            // Two sequences of three tokens, width 8 in two heads; the queries, keys and values
            // all depend on x (so every argument's gradient path is checked), and the bias masks
            // the second sequence's last key.
            fused: Box::new(|x| {
                let (q, k, v, bias) = attention_inputs(x)?;
                fused::attention(&q, &k, &v, Some(&bias), 2)
            }),
            composite: Box::new(|x| {
                let (q, k, v, bias) = attention_inputs(x)?;
                ops::attention(&q, &k, &v, Some(&bias), 2)
            }),
            shape: (6, 8),
        },
        Case {
            name: "cross_entropy",
            fused: Box::new(|z| fused::cross_entropy(z, &labels())),
            // candle_nn's cross_entropy fails in a double backward whose incoming gradient
            // depends on the input (its gather's backward scatters with mismatched shapes), so
            // the reference is the soft-target form with one-hot targets.
            composite: Box::new(|z| {
                let onehot = candle_nn::encoding::one_hot(labels(), 7, 1.0, 0.0)?;
                advtrain::ops::soft_cross_entropy(z, &onehot.to_dtype(z.dtype())?)
            }),
            shape: (5, 7),
        },
    ]
}

/// Queries, keys and values `(2, 3, 8)` from `x` `(6, 8)`, and a key bias `(2, 1, 1, 3)`.
type AttentionInputs = (Tensor, Tensor, Tensor, Tensor);
fn attention_inputs(x: &Tensor) -> candle_core::Result<AttentionInputs> {
    let q = x.reshape((2, 3, 8))?;
    let k = (q.affine(0.7, 0.1)? + q.sqr()? * 0.2)?;
    let v = (q.affine(-0.5, 0.3)? + q.sin()?)?;
    let bias = Tensor::new(&[0.0f64, 0.3, -0.2, 0.1, -0.4, -1e4], x.device())?
        .to_dtype(x.dtype())?
        .reshape((2, 1, 1, 3))?;
    Ok((q, k, v, bias))
}

fn points(shape: (usize, usize), dtype: DType) -> Tensor {
    // Both tails and the middle: GELU's derivatives change sign near |x| = sqrt 2 and 2.
    let mut rng = Rng::new(3);
    (rng.normal(shape, DType::F64, &Device::Cpu).unwrap() * 2.0)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A nonlinear scalar that weights every element differently, so a wrong entry cannot cancel, and
/// whose gradient depends on the output (so a double backward meets both arguments of each
/// backward op).
fn scalar(y: &Tensor) -> candle_core::Result<Tensor> {
    let n = y.elem_count();
    let w = (Tensor::arange(1.0, n as f64 + 1.0, y.device())? / n as f64)?
        .to_dtype(y.dtype())?
        .reshape(y.shape())?;
    ((y + (y.sqr()? * 0.5)?)? * w)?.sum_all()
}

fn through<'a>(op: &'a Op) -> impl Fn(&Tensor) -> candle_core::Result<Tensor> + 'a {
    move |x| scalar(&op(x)?)
}

fn gradient(f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, x: &Tensor) -> Tensor {
    let var = Var::from_tensor(x).unwrap();
    let grads = f(var.as_tensor()).unwrap().backward().unwrap();
    grads.get(var.as_tensor()).unwrap().clone()
}

fn hvp(f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, x: &Tensor, v: &Tensor) -> Tensor {
    let target = Target::input(x).unwrap();
    advtrain::laplacian::hessian_vector_product(&target, f, v).unwrap()
}

#[test]
fn values_gradients_and_hessian_vector_products_equal_the_composite_forms() {
    for case in cases() {
        for (dtype, tolerance) in [(DType::F64, 1e-14), (DType::F32, 2e-6)] {
            let x = points(case.shape, dtype);
            let v = points(case.shape, dtype).t().unwrap().contiguous().unwrap();
            let v = v.reshape(x.shape()).unwrap();
            let (fused, composite) = (through(&case.fused), through(&case.composite));
            let value =
                relative_error(&(case.fused)(&x).unwrap(), &(case.composite)(&x).unwrap()).unwrap();
            let grad = relative_error(&gradient(&fused, &x), &gradient(&composite, &x)).unwrap();
            let second = relative_error(&hvp(&fused, &x, &v), &hvp(&composite, &x, &v)).unwrap();
            println!(
                "{} {dtype:?}: value {value:.1e}, gradient {grad:.1e}, Hv {second:.1e}",
                case.name
            );
            assert!(value < tolerance, "{} {dtype:?} value {value:e}", case.name);
            assert!(
                grad < tolerance * 10.0,
                "{} {dtype:?} gradient {grad:e}",
                case.name
            );
            assert!(
                second < tolerance * 100.0,
                "{} {dtype:?} Hv {second:e}",
                case.name
            );
        }
    }
}

#[test]
fn strided_input_gives_the_same_values() {
    for case in cases().into_iter().filter(|c| c.name != "cross_entropy") {
        let x = points((case.shape.1, case.shape.0), DType::F64)
            .t()
            .unwrap();
        assert!(!x.is_contiguous());
        let e = relative_error(&(case.fused)(&x).unwrap(), &(case.composite)(&x).unwrap()).unwrap();
        assert!(e < 1e-14, "{}: {e:e}", case.name);
    }
}

#[test]
fn first_second_and_third_derivatives_match_finite_differences() {
    for case in cases() {
        let x = points(case.shape, DType::F64);
        let f = through(&case.fused);
        let first = gradcheck(&f, &x, 1e-5).unwrap();
        let v = Rng::new(4)
            .normal(x.shape(), DType::F64, &Device::Cpu)
            .unwrap();
        let second = gradcheck_second_order(&f, &x, &v, 1e-5).unwrap();
        // Third order through the composite tails: the Hessian-vector product's own gradient.
        let third = gradcheck(
            |x: &Tensor| {
                let t = Target::input(x)?;
                let hv = advtrain::laplacian::hessian_vector_product(&t, &f, &v)?;
                scalar(&hv)
            },
            &x,
            1e-5,
        )
        .unwrap();
        println!(
            "{}: first {:.1e}, second {:.1e}, third {:.1e}",
            case.name, first.relative_error, second.relative_error, third.relative_error
        );
        for (order, check, tolerance) in [(1, first, 1e-8), (2, second, 1e-7), (3, third, 1e-6)] {
            assert!(
                check.norm > 0.0,
                "{} order {order}: zero derivative",
                case.name
            );
            assert!(
                check.relative_error < tolerance,
                "{} order {order}: {check:?}",
                case.name
            );
        }
    }
}

#[test]
fn the_fused_gradient_is_exact_where_candles_gelu_erf_is_not() {
    let x = points((4, 25), DType::F64);
    let linear =
        |f: fn(&Tensor) -> candle_core::Result<Tensor>| move |x: &Tensor| (f(x)? * 1.0)?.sum_all();
    let fused = gradient(&linear(fused::gelu_erf), &x);
    let composite = gradient(&linear(ops::gelu_erf), &x);
    let candle = gradient(&linear(|x| x.gelu_erf()), &x);
    let ours = relative_error(&fused, &composite).unwrap();
    let theirs = relative_error(&candle, &composite).unwrap();
    assert!(ours < 1e-14, "{ours:e}");
    // candle's backward uses 0.398942 for 1/sqrt(2 pi): a relative error near 1e-7, far above f64's.
    assert!(theirs > 1e-9, "{theirs:e}");
    println!("gelu_erf gradient vs exact: fused {ours:.1e}, candle {theirs:.1e}");
}

#[test]
fn bad_input_is_an_error_naming_the_argument() {
    let ints = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    let message = fused::gelu_erf(&ints).unwrap_err().to_string();
    assert!(
        message.contains("x") && message.contains("to_dtype"),
        "{message}"
    );
    let scalar = Tensor::new(1.0f64, &Device::Cpu).unwrap();
    assert!(fused::softmax_last_dim(&scalar).is_err());
    let logits = points((5, 7), DType::F64);
    let short = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let message = fused::cross_entropy(&logits, &short)
        .unwrap_err()
        .to_string();
    assert!(message.contains("labels"), "{message}");
    let out_of_range = Tensor::new(&[1u32, 2, 3, 4, 7], &Device::Cpu).unwrap();
    let message = fused::cross_entropy(&logits, &out_of_range)
        .unwrap_err()
        .to_string();
    assert!(message.contains("out of range"), "{message}");
    let candle = candle_nn::loss::cross_entropy(&logits, &labels()).unwrap();
    let ours = fused::cross_entropy(&logits, &labels()).unwrap();
    assert!(relative_error(&ours, &candle).unwrap() < 1e-15);
    let message = fused::layer_norm(&logits, None, None, -1.0)
        .unwrap_err()
        .to_string();
    assert!(message.contains("eps"), "{message}");
}

#[test]
fn the_f32_erf_and_exp_are_accurate_over_their_range() {
    // erf: absolute error over [-6, 6] (outside [-4, 4] it is +-1 to f32 precision).
    let mut worst_erf: f64 = 0.0;
    for i in 0..=120_000 {
        let x = -6.0 + i as f64 * 1e-4;
        let exact = candle_core::cpu::erf::erf_f64(x);
        worst_erf = worst_erf.max((fused::erf_f32(x as f32) as f64 - exact).abs());
    }
    // exp: relative error over the whole normal range, to the exp of the f32 input.
    let mut worst_exp: f64 = 0.0;
    for i in 0..=200_000 {
        let x = (-87.0 + i as f64 * 175.0 / 200_000.0) as f32;
        let exact = (x as f64).exp();
        worst_exp = worst_exp.max(((fused::exp_f32(x) as f64 - exact) / exact).abs());
    }
    println!("f32 erf max abs error {worst_erf:.1e}, exp max rel error {worst_exp:.1e}");
    assert!(worst_erf < 5e-7, "{worst_erf:e}");
    assert!(worst_exp < 2e-7, "{worst_exp:e}");
    // Far outside the range: saturated, never NaN or infinite.
    assert!((fused::erf_f32(-50.0) + 1.0).abs() < 5e-7);
    assert!((fused::erf_f32(f32::INFINITY) - 1.0).abs() < 5e-7);
    assert!(fused::exp_f32(1000.0).is_finite());
}

#[test]
fn the_f32_exp_gives_zero_not_a_subnormal_where_it_underflows() {
    // A masked attention score (-1e4 added to the logit) must give a probability of exactly 0: a
    // tiny normal number there makes the next matrix product's results subnormal, which some cores
    // compute by a slow assist (a 10x to 14x slower step, book: "Fused operations and speed").
    for x in [
        -1e4f32,
        -1000.0,
        -104.0,
        -88.0,
        -87.31,
        f32::MIN,
        f32::NEG_INFINITY,
    ] {
        assert_eq!(fused::exp_f32(x), 0.0, "exp_f32({x})");
    }
    // Every result is 0 or a normal number, across the whole edge of the range.
    for i in 0..=100_000 {
        let x = -90.0 + i as f32 * 1e-4;
        let y = fused::exp_f32(x);
        assert!(
            y == 0.0 || y.is_normal(),
            "exp_f32({x}) = {y:e} is subnormal"
        );
        if x >= fused::EXP_F32_ZERO_BELOW {
            assert!(y > 0.0, "exp_f32({x}) is 0 above the cut");
        }
    }
}

/// Two layers `x -> gelu(x W1^T + b1) W2^T + b2 -> scalar` with `W1` as the argument, fused or with
/// candle's matmul.
fn two_layers(fused_ops: bool) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> {
    move |x: &Tensor, w1: &Tensor| {
        let (_, b1) = layer(x.dtype());
        let mut rng = Rng::new(12);
        let w2 = (rng.normal((3, 6), DType::F64, &Device::Cpu)? * 0.5)?.to_dtype(x.dtype())?;
        let b2 = Tensor::new(&[0.1f64, -0.1, 0.2], &Device::Cpu)?.to_dtype(x.dtype())?;
        let e = candle_core::Error::from;
        let y = if fused_ops {
            let h = fused::gelu_erf(&fused::linear(x, w1, Some(&b1)).map_err(e)?).map_err(e)?;
            fused::linear(&h, &w2, Some(&b2)).map_err(e)?
        } else {
            let h = ops::gelu_erf(&x.matmul(&w1.t()?)?.broadcast_add(&b1)?).map_err(e)?;
            h.matmul(&w2.t()?)?.broadcast_add(&b2)?
        };
        scalar(&y)
    }
}

/// `||dL/dx||^2` (gradient penalty) and `v^T H_x v` (Hutchinson) as functions of `W1`.
fn penalty_and_curvature(fused_ops: bool, x: &Tensor, v: &Tensor) -> [ScalarFn; 3] {
    let loss = two_layers(fused_ops);
    let (x1, x2, x3, v3) = (x.clone(), x.clone(), x.clone(), v.clone());
    let e = candle_core::Error::from;
    [
        Box::new(move |w1| loss(&x1, w1)),
        Box::new(move |w1| {
            let target = Target::input(&x2).map_err(e)?;
            let f = |p: &Tensor| two_layers(fused_ops)(p, w1);
            let g = target.loss_and_gradient(&f).map_err(e)?.gradient;
            g.sqr()?.sum_all()
        }),
        Box::new(move |w1| {
            let target = Target::input(&x3).map_err(e)?;
            let f = |p: &Tensor| two_layers(fused_ops)(p, w1);
            let hv = advtrain::laplacian::hessian_vector_product(&target, &f, &v3).map_err(e)?;
            (hv * &v3)?.sum_all()
        }),
    ]
}

#[test]
fn linear_weight_gradients_through_gradient_penalty_and_hutchinson_match() {
    let x = points((5, 7), DType::F64);
    let v = Rng::new(5)
        .rademacher((5, 7), DType::F64, &Device::Cpu)
        .unwrap();
    let (w1, _) = layer(DType::F64);
    let fused_fns = penalty_and_curvature(true, &x, &v);
    let composite_fns = penalty_and_curvature(false, &x, &v);
    for (i, name) in ["loss", "gradient penalty", "Hutchinson"]
        .iter()
        .enumerate()
    {
        // Against finite differences in W1 (the loss's first, the penalty's second and the
        // curvature's third derivative) and against candle's matmul.
        let check = gradcheck(&fused_fns[i], &w1, 1e-5).unwrap();
        let fused_grad = gradient(&fused_fns[i], &w1);
        let composite_grad = gradient(&composite_fns[i], &w1);
        let agreement = relative_error(&fused_grad, &composite_grad).unwrap();
        println!(
            "{name}: d/dW1 vs finite differences {:.1e}, vs candle's matmul {agreement:.1e}",
            check.relative_error
        );
        assert!(check.norm > 0.0, "{name}: zero gradient");
        assert!(check.relative_error < 1e-7, "{name}: {check:?}");
        assert!(agreement < 1e-13, "{name}: {agreement:e}");
    }
}

/// `x -> gelu(layer_norm(x) w + b) W2^T -> scalar` as a function of the layer norm's scale `w`
/// (`shift` false) or shift `b` (`shift` true), fused or composite.
fn normed(
    fused_ops: bool,
    shift: bool,
) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> {
    move |x: &Tensor, param: &Tensor| {
        let mut rng = Rng::new(13);
        let other = (rng.normal(7, DType::F64, &Device::Cpu)? * 0.3)?.to_dtype(x.dtype())?;
        let w2 = (rng.normal((3, 7), DType::F64, &Device::Cpu)? * 0.5)?.to_dtype(x.dtype())?;
        let (w, b) = match shift {
            false => ((param + 1.0)?, other),
            true => ((other + 1.0)?, param.clone()),
        };
        let e = candle_core::Error::from;
        let y = if fused_ops {
            fused::gelu_erf(&fused::layer_norm(x, Some(&w), Some(&b), 1e-3)?)?
        } else {
            ops::gelu_erf(&ops::layer_norm(x, Some(&w), Some(&b), 1e-3)?).map_err(e)?
        };
        scalar(&y.matmul(&w2.t()?)?)
    }
}

/// The layer norm's scale and shift gradients of the loss, of gradient penalty and of Hutchinson's
/// curvature (first, second and third derivatives through the fused scale-and-shift op) match finite
/// differences and the composite form with candle's broadcast ops.
#[test]
fn layer_norm_scale_and_shift_gradients_through_gradient_penalty_and_hutchinson_match() {
    let x = points((5, 7), DType::F64);
    let v = Rng::new(6)
        .rademacher((5, 7), DType::F64, &Device::Cpu)
        .unwrap();
    let param = (Rng::new(7).normal(7, DType::F64, &Device::Cpu).unwrap() * 0.2).unwrap();
    for shift in [false, true] {
        let functions = |fused_ops: bool| -> [ScalarFn; 3] {
            let (x1, x2, x3, v3) = (x.clone(), x.clone(), x.clone(), v.clone());
            let e = candle_core::Error::from;
            let f = normed(fused_ops, shift);
            [
                Box::new(move |p| f(&x1, p)),
                Box::new(move |p| {
                    let target = Target::input(&x2).map_err(e)?;
                    let loss = |y: &Tensor| normed(fused_ops, shift)(y, p);
                    let g = target.loss_and_gradient(&loss).map_err(e)?.gradient;
                    g.sqr()?.sum_all()
                }),
                Box::new(move |p| {
                    let target = Target::input(&x3).map_err(e)?;
                    let loss = |y: &Tensor| normed(fused_ops, shift)(y, p);
                    let hv = advtrain::laplacian::hessian_vector_product(&target, &loss, &v3)
                        .map_err(e)?;
                    (hv * &v3)?.sum_all()
                }),
            ]
        };
        let (fused_fns, composite_fns) = (functions(true), functions(false));
        let which = if shift { "shift" } else { "scale" };
        for (i, name) in ["loss", "gradient penalty", "Hutchinson"]
            .iter()
            .enumerate()
        {
            let check = gradcheck(&fused_fns[i], &param, 1e-5).unwrap();
            let agreement = relative_error(
                &gradient(&fused_fns[i], &param),
                &gradient(&composite_fns[i], &param),
            )
            .unwrap();
            println!(
                "{name}, d/d{which}: vs finite differences {:.1e}, vs the composite {agreement:.1e}",
                check.relative_error
            );
            assert!(check.norm > 0.0, "{name} {which}: zero gradient");
            assert!(check.relative_error < 1e-7, "{name} {which}: {check:?}");
            assert!(agreement < 1e-13, "{name} {which}: {agreement:e}");
        }
    }
}

#[test]
fn backward_for_leaves_out_the_weights_and_keeps_the_point() {
    let x = points((5, 7), DType::F64);
    let (w, b) = layer(DType::F64);
    let (w, b) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
    let probe = Var::zeros((5, 7), DType::F64, &Device::Cpu).unwrap();
    let point = (&x + probe.as_tensor()).unwrap();
    let loss =
        scalar(&fused::gelu_erf(&fused::linear(&point, &w, Some(&b)).unwrap()).unwrap()).unwrap();
    let all = loss.backward().unwrap();
    let only = fused::backward_for(&loss, &[probe.as_tensor()]).unwrap();
    let at_point = |g: &candle_core::backprop::GradStore| g.get(probe.as_tensor()).unwrap().clone();
    assert!(relative_error(&at_point(&only), &at_point(&all)).unwrap() < 1e-15);
    assert!(all.get(w.as_tensor()).is_some() && all.get(b.as_tensor()).is_some());
    assert!(only.get(w.as_tensor()).is_none() && only.get(b.as_tensor()).is_none());
    // Leaving out a variable fed to the layer keeps the weights' gradients and drops its own.
    let input = Var::from_tensor(&x).unwrap();
    let loss =
        scalar(&fused::gelu_erf(&fused::linear(&input, &w, Some(&b)).unwrap()).unwrap()).unwrap();
    let all = loss.backward().unwrap();
    let except = fused::backward_except(&loss, &[input.as_tensor()]).unwrap();
    let weight = |g: &candle_core::backprop::GradStore| g.get(w.as_tensor()).unwrap().clone();
    assert!(relative_error(&weight(&except), &weight(&all)).unwrap() < 1e-15);
    assert!(all.get(input.as_tensor()).is_some() && except.get(input.as_tensor()).is_none());
    // A non-variable in the list is not left out (candle needs its gradient to go on).
    let through_point = fused::backward_except(&loss, &[&point]).unwrap();
    assert!(through_point.get(w.as_tensor()).is_some());
    // The choice ends with the pass: a plain backward afterwards computes everything again.
    assert!(loss.backward().unwrap().get(w.as_tensor()).is_some());
}

#[test]
fn large_tensors_split_over_the_cores_give_the_one_thread_results_bit_for_bit() {
    // 300 x 257 = 77,100 elements: above the kernels' parallel threshold (2 x 2^14), in whole rows of
    // an odd length, so the row-wise ops (layer norm, softmax) split into uneven tasks. Each task
    // does the serial arithmetic on its part, so values and gradients must be identical, in f64 and
    // in f32 (whose erf and exp are the vectorised polynomial forms).
    type Unary = fn(&Tensor) -> candle_core::Result<Tensor>;
    let ops: [(&str, Unary); 9] = [
        ("gelu_erf", fused::gelu_erf),
        ("gelu_tanh", fused::gelu_tanh),
        ("layer_norm", |x| fused::layer_norm(x, None, None, 1e-5)),
        ("softmax", fused::softmax_last_dim),
        ("log_softmax", fused::log_softmax_last_dim),
        // Three sequences of 100 tokens, width 257 in one head: enough work for the
        // (sequence, head) pairs to split over the pool.
        ("attention", |x| {
            let x = x.reshape((3, 100, 257))?;
            fused::attention(&x, &x.affine(0.5, 0.0)?, &x, None, 1)?.reshape((300, 257))
        }),
        // The matrix products, split by rows or columns over the pool: `x W^T` and `u W` ...
        ("linear", |x| {
            let w = points((257, 257), x.dtype()).affine(0.3, -0.1)?;
            fused::linear(x, &w, None)
        }),
        // ... and the weight's gradient `u^T x`, with `x` as the weight: `(a x^T)^T a`.
        ("linear, weight", |x| {
            let a = points((180, 257), x.dtype()).affine(0.1, 0.2)?;
            let ax = fused::linear(&a, x, None)?;
            fused::linear(&ax.t()?.contiguous()?, &a.t()?.contiguous()?, None)
        }),
        ("conv2d", |x| {
            let k = points((36, 9), x.dtype())
                .reshape((6, 6, 3, 3))?
                .affine(0.2, 0.0)?;
            fused::conv2d(&x.reshape((1, 6, 50, 257))?, &k, None, 1, 1)?.reshape((300, 257))
        }),
    ];
    for dtype in [DType::F64, DType::F32] {
        let x = points((300, 257), dtype);
        let w = points((300, 257), DType::F64)
            .affine(0.5, 0.1)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let in_pool = |threads: usize, op: Unary| -> (Vec<f64>, Vec<f64>) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(rayon::current_num_threads(), threads);
                let weighted = |x: &Tensor| (op(x)? * &w)?.sum_all();
                (values(&op(&x).unwrap()), values(&gradient(&weighted, &x)))
            })
        };
        for (name, op) in ops {
            let one = in_pool(1, op);
            // Three threads cut the products into uneven blocks.
            for threads in [2, 3] {
                let many = in_pool(threads, op);
                assert!(
                    one.0 == many.0,
                    "{name} ({dtype:?}): values differ between 1 and {threads} threads"
                );
                assert!(
                    one.1 == many.1,
                    "{name} ({dtype:?}): gradients differ between 1 and {threads} threads"
                );
            }
        }
    }
}

/// The kernel's and bias's gradients equal candle's, to first order and through gradient penalty
/// (the gradient of a gradient norm), for windows that overlap (stride 1), skip (stride 3) and
/// are rectangular; mismatched shapes are errors naming the argument.
#[test]
fn conv2d_kernel_gradients_equal_candles_to_second_order() {
    let mut rng = Rng::new(13);
    // candle's conv2d backward takes the width's output padding from the height's, so the second
    // geometry leaves the same remainder in both (7 = 3 + 2 + 2, 9 = 3 + 4 + 2).
    for (kernel_shape, stride, padding) in [((4, 3, 3, 3), 1, 1), ((4, 3, 2, 4), 3, 0)] {
        let x = rng.normal((2, 3, 7, 9), DType::F64, &Device::Cpu).unwrap();
        let k = Var::from_tensor(
            &(rng.normal(kernel_shape, DType::F64, &Device::Cpu).unwrap() * 0.3).unwrap(),
        )
        .unwrap();
        let b = Var::from_tensor(&rng.normal(4, DType::F64, &Device::Cpu).unwrap()).unwrap();
        let penalised = |fused_op: bool| {
            let point = Var::from_tensor(&x).unwrap();
            let y = if fused_op {
                fused::conv2d(
                    point.as_tensor(),
                    k.as_tensor(),
                    Some(b.as_tensor()),
                    stride,
                    padding,
                )
            } else {
                point
                    .as_tensor()
                    .conv2d(k.as_tensor(), padding, stride, 1, 1)
                    .and_then(|y| y.broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1))?))
            }
            .unwrap();
            let loss = scalar(&y.tanh().unwrap()).unwrap();
            let g = loss.backward().unwrap().remove(point.as_tensor()).unwrap();
            let objective = (loss + g.sqr().unwrap().sum_all().unwrap()).unwrap();
            let grads = objective.backward().unwrap();
            [k.as_tensor(), b.as_tensor()].map(|t| grads.get(t).unwrap().clone())
        };
        let (ours, candles) = (penalised(true), penalised(false));
        for (a, c) in ours.iter().zip(&candles) {
            let error = relative_error(a, c).unwrap();
            assert!(error < 1e-12, "{kernel_shape:?} stride {stride}: {error:e}");
        }
    }
    let x = Tensor::zeros((1, 3, 5, 5), DType::F64, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 4, 3, 3), DType::F64, &Device::Cpu).unwrap();
    let error = fused::conv2d(&x, &k, None, 1, 0).unwrap_err().to_string();
    assert!(
        error.contains("kernel") && error.contains("3 input channels"),
        "{error}"
    );
    let k = Tensor::zeros((2, 3, 7, 7), DType::F64, &Device::Cpu).unwrap();
    let error = fused::conv2d(&x, &k, None, 1, 0).unwrap_err().to_string();
    assert!(error.contains("fits"), "{error}");
    let k = Tensor::zeros((2, 3, 3, 3), DType::F64, &Device::Cpu).unwrap();
    let error = fused::conv2d(&x, &k, None, 0, 0).unwrap_err().to_string();
    assert!(error.contains("stride"), "{error}");
}

/// The gradient of a kernel gradient: `||dL/dK||^2` for `L = sum tanh(conv2d(x, K) + b)`, as a
/// function of `K` and of `x`, matches finite differences. Its backward runs the convolution's
/// third product (`KernelGrad`) backward, which no first- or second-order method in the crate reaches.
#[test]
fn the_gradient_of_a_conv_kernel_gradient_matches_finite_differences() {
    let mut rng = Rng::new(17);
    let x = rng.normal((2, 3, 7, 9), DType::F64, &Device::Cpu).unwrap();
    let kernel = (rng.normal((4, 3, 3, 3), DType::F64, &Device::Cpu).unwrap() * 0.3).unwrap();
    let bias = rng.normal(4, DType::F64, &Device::Cpu).unwrap();
    for (stride, padding) in [(1, 1), (2, 0)] {
        let squared_kernel_gradient = |x: &Tensor, k: &Var| -> candle_core::Result<Tensor> {
            let y = fused::conv2d(x, k.as_tensor(), Some(&bias), stride, padding)?;
            let grads = y.tanh()?.sum_all()?.backward()?;
            grads.get(k.as_tensor()).unwrap().sqr()?.sum_all()
        };
        // gradcheck differentiates with its argument as a variable, and evaluates the finite
        // differences with plain tensors, which become variables here (the inner gradient needs one).
        let in_kernel = gradcheck(
            |k: &Tensor| {
                let k = match k.is_variable() {
                    true => k.clone(),
                    false => Var::from_tensor(k)?.as_tensor().clone(),
                };
                let y = fused::conv2d(&x, &k, Some(&bias), stride, padding)?;
                let grads = y.tanh()?.sum_all()?.backward()?;
                grads.get(&k).unwrap().sqr()?.sum_all()
            },
            &kernel,
            1e-5,
        )
        .unwrap();
        let k = Var::from_tensor(&kernel).unwrap();
        let in_image = gradcheck(|x: &Tensor| squared_kernel_gradient(x, &k), &x, 1e-5).unwrap();
        println!(
            "stride {stride}: d/dK {:.1e}, d/dx {:.1e}",
            in_kernel.relative_error, in_image.relative_error
        );
        for (what, check) in [("kernel", in_kernel), ("image", in_image)] {
            assert!(check.norm > 0.0, "{what}: zero gradient");
            assert!(
                check.relative_error < 1e-7,
                "{what} stride {stride}: {check:?}"
            );
        }
    }
}

/// A batch taken from a larger tensor (a view that starts inside its storage) convolves and
/// differentiates like a copy of it, and empty dimensions are errors that name the argument.
#[test]
fn conv2d_takes_views_and_refuses_empty_dimensions() {
    let mut rng = Rng::new(19);
    let images = rng.normal((5, 2, 6, 6), DType::F64, &Device::Cpu).unwrap();
    let kernel = Var::from_tensor(
        &(rng.normal((3, 2, 3, 3), DType::F64, &Device::Cpu).unwrap() * 0.3).unwrap(),
    )
    .unwrap();
    let view = images.narrow(0, 2, 3).unwrap();
    let copy = view.copy().unwrap();
    let gradient = |x: &Tensor| {
        let y = fused::conv2d(x, kernel.as_tensor(), None, 2, 1).unwrap();
        let grads = y.tanh().unwrap().sum_all().unwrap().backward().unwrap();
        let k = grads.get(kernel.as_tensor()).unwrap().clone();
        (y, k)
    };
    let ((y_view, k_view), (y_copy, k_copy)) = (gradient(&view), gradient(&copy));
    assert!(relative_error(&y_view, &y_copy).unwrap() == 0.0);
    assert!(relative_error(&k_view, &k_copy).unwrap() == 0.0);
    let empty = Tensor::zeros((0, 2, 6, 6), DType::F64, &Device::Cpu).unwrap();
    let error = fused::conv2d(&empty, kernel.as_tensor(), None, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(error.contains("x") && error.contains("empty"), "{error}");
    let flat = Tensor::zeros((3, 2, 0, 3), DType::F64, &Device::Cpu).unwrap();
    let error = fused::conv2d(&images, &flat, None, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("kernel") && error.contains("empty"),
        "{error}"
    );
    let error = fused::conv2d(&images, kernel.as_tensor(), None, 1, usize::MAX)
        .unwrap_err()
        .to_string();
    assert!(error.contains("kernel"), "{error}");
}

/// `no_idle_spinning` sets candle's spin limit to 0 where the user has not set it, and leaves a
/// user's value alone; each case runs in a child process, whose environment nothing else touches.
#[test]
fn no_idle_spinning_sets_the_spin_limit_unless_the_user_did() {
    use std::process::Command;
    for (given, expected) in [(None, "0"), (Some("7"), "7")] {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child.args([
            "--ignored",
            "--exact",
            "fused::child_sets_the_spin_limit",
            "--nocapture",
            "--test-threads=1",
        ]);
        match given {
            Some(value) => child.env(fused::SPIN_LIMIT_VAR, value),
            None => child.env_remove(fused::SPIN_LIMIT_VAR),
        };
        let output = child.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed:\n{text}");
        assert!(
            text.contains(&format!("spin limit after the call: {expected};")),
            "given {given:?}:\n{text}"
        );
    }
}

#[test]
#[ignore = "run by no_idle_spinning_sets_the_spin_limit_unless_the_user_did in a child process"]
fn child_sets_the_spin_limit() {
    // SAFETY: the child runs this one test on one thread; nothing else reads the environment.
    unsafe { fused::no_idle_spinning() };
    let value = std::env::var(fused::SPIN_LIMIT_VAR).unwrap_or_default();
    println!("spin limit after the call: {value};");
}

/// `in_worker_pool` runs its closure on a worker of a pool with candle's thread count, runs a nested
/// call in place, and changes no number: an FGM step of a 256 x 512 MLP (f32, large enough that the
/// products, the fused kernels and candle's elementwise ops all split their work) gives the same
/// loss and gradients bit for bit on the pool as on the test's own thread.
#[test]
fn in_worker_pool_runs_on_a_worker_and_changes_no_number() {
    use advtrain::{Batch, Fgm, Method};
    let (outer, threads, nested) = fused::in_worker_pool(|| {
        let outer = rayon::current_thread_index();
        let nested = fused::in_worker_pool(rayon::current_thread_index);
        (outer, rayon::current_num_threads(), nested)
    });
    assert!(outer.is_some(), "the closure ran outside the pool");
    assert_eq!(threads, candle_core::utils::get_num_threads());
    assert_eq!(nested, outer, "a nested call moved to another worker");
    // Each calling thread has a pool of its own; a call from another rayon pool's worker moves to it.
    let worker = || fused::in_worker_pool(|| std::thread::current().id());
    let (here, there) = (worker(), std::thread::spawn(worker).join().unwrap());
    assert_ne!(here, there, "two calling threads shared a worker");
    let foreign = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let name = foreign
        .install(|| fused::in_worker_pool(|| std::thread::current().name().map(String::from)));
    assert!(
        name.as_deref()
            .is_some_and(|n| n.starts_with("advtrain-worker")),
        "ran on {name:?}"
    );

    let mut rng = Rng::new(5);
    let widths = [512, 512, 10];
    let layers: Vec<(Var, Var)> = (0..2)
        .map(|i| {
            let w = (rng.normal((widths[i + 1], widths[i]), DType::F32, &Device::Cpu))
                .unwrap()
                .affine(0.04, 0.0)
                .unwrap();
            let b = Tensor::zeros(widths[i + 1], DType::F32, &Device::Cpu).unwrap();
            (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap())
        })
        .collect();
    let x = rng.normal((256, 512), DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::from_vec(
        (0..256u32).map(|i| i % 10).collect::<Vec<_>>(),
        256,
        &Device::Cpu,
    )
    .unwrap();
    let step = || {
        let loss = |x: &Tensor| {
            let h = fused::linear(x, layers[0].0.as_tensor(), Some(layers[0].1.as_tensor()))?;
            let h = fused::gelu_erf(&h)?;
            let z = fused::linear(&h, layers[1].0.as_tensor(), Some(layers[1].1.as_tensor()))?;
            fused::cross_entropy(&z, &y)
        };
        let target = Target::input(&x).unwrap();
        let step = Fgm::new(0.5)
            .unwrap()
            .step(&Batch::new(&target, &loss), &mut Rng::new(0))
            .unwrap();
        let mut numbers = vec![step.loss.to_scalar::<f32>().unwrap()];
        for (w, b) in &layers {
            for v in [w, b] {
                let g = step.grads.get(v.as_tensor()).unwrap();
                numbers.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
        }
        numbers
    };
    let (outside, inside) = (step(), fused::in_worker_pool(step));
    assert_eq!(outside.len(), inside.len());
    let differ = outside.iter().zip(&inside).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} of {} numbers differ", outside.len());
}

/// The pool's workers have stacks for deep graphs: candle's backward walks the graph recursively,
/// and a chain of 30,000 ops overflows rayon's default 2 MiB (and the test threads' 2 MiB).
#[test]
fn a_backward_pass_30000_nodes_deep_runs_on_the_pool() {
    let grad = fused::in_worker_pool(|| {
        let x = Var::from_tensor(&Tensor::new(1.0f64, &Device::Cpu).unwrap()).unwrap();
        let mut y = x.as_tensor().clone();
        for _ in 0..30_000 {
            y = (y * 1.0001).unwrap();
        }
        let grads = y.backward().unwrap();
        grads
            .get(x.as_tensor())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    });
    let expected = 1.0001f64.powi(30_000);
    assert!(
        (grad - expected).abs() < 1e-9 * expected,
        "{grad} vs {expected}"
    );
}

/// `backward_first_order` gives the gradients `backward` gives, bit for bit, through every fused op,
/// but none of them records the graph that made it (with second order on, `backward`'s do), and the
/// choice ends with the pass.
#[test]
fn backward_first_order_gives_the_same_gradients_without_their_graph() {
    assert!(
        advtrain::second_order::is_enabled(),
        "the suite runs with second order on"
    );
    let mut rng = Rng::new(21);
    let x = Var::from_tensor(&rng.normal((4, 2, 6, 6), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let kernel = Var::from_tensor(
        &(rng.normal((3, 2, 3, 3), DType::F64, &Device::Cpu).unwrap() * 0.3).unwrap(),
    )
    .unwrap();
    let (w, b) = layer(DType::F64);
    let w = Var::from_tensor(&w.narrow(1, 0, 6).unwrap().contiguous().unwrap()).unwrap();
    let scale = Var::from_tensor(&Tensor::ones(6, DType::F64, &Device::Cpu).unwrap()).unwrap();
    let loss = || {
        let y = fused::conv2d(x.as_tensor(), kernel.as_tensor(), None, 2, 1).unwrap();
        let y = y.reshape((4 * 3 * 3, 3)).unwrap();
        let y = fused::gelu_erf(
            &y.matmul(&Tensor::ones((3, 6), DType::F64, &Device::Cpu).unwrap())
                .unwrap(),
        )
        .unwrap();
        let y = fused::layer_norm(&y, Some(scale.as_tensor()), None, 1e-5).unwrap();
        let y =
            fused::softmax_last_dim(&fused::linear(&y, w.as_tensor(), Some(&b)).unwrap()).unwrap();
        let labels = Tensor::new(&[1u32; 36], &Device::Cpu).unwrap();
        fused::cross_entropy(&fused::log_softmax_last_dim(&y).unwrap(), &labels).unwrap()
    };
    let variables = [
        x.as_tensor(),
        kernel.as_tensor(),
        w.as_tensor(),
        scale.as_tensor(),
    ];
    let full = loss().backward().unwrap();
    let first = fused::backward_first_order(&loss()).unwrap();
    for v in variables {
        let (a, g) = (full.get(v).unwrap(), first.get(v).unwrap());
        assert_eq!(values(a), values(g));
        assert!(a.track_op(), "backward's gradient should keep its graph");
        assert!(
            !g.track_op(),
            "backward_first_order's gradient kept its graph"
        );
    }
    // The choice ends with the pass.
    assert!(
        loss()
            .backward()
            .unwrap()
            .get(w.as_tensor())
            .unwrap()
            .track_op()
    );
}

#[test]
fn the_linear_products_equal_candles_matmul_exactly() {
    // fused::linear computes its three products (forward, input gradient, weight gradient) by
    // gemm calls into memory that is not zero-filled first, one per block of rows or columns on
    // several threads (src/fused/product.rs): the values must be candle's exactly (one gemm call
    // on the whole), at one thread and at several, for shapes that do and do not fill gemm's
    // register tiles, and for shapes whose blocks could fall to another of gemm's kernels: a side
    // of 64 or less with an inner size above 512 (gemm's small path blocks the sum differently),
    // a few rows (its horizontal kernel), and 33 rows (a block of one row).
    let mut rng = Rng::new(31);
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for dtype in [DType::F64, DType::F32] {
            let shapes = [
                (1, 1, 1),
                (3, 5, 7),
                (64, 33, 10),
                (257, 130, 96),
                (64, 800, 128),
                (64, 128, 800),
                (4, 1024, 96),
                (33, 20, 600),
            ];
            for (m, k, n) in shapes {
                let normal = |rng: &mut Rng, shape: (usize, usize)| {
                    rng.normal(shape, DType::F64, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (x, w, u) = (
                    normal(&mut rng, (m, k)),
                    normal(&mut rng, (n, k)),
                    normal(&mut rng, (m, n)),
                );
                let (y, grad_x, grad_w) = pool.install(|| {
                    let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
                    let y = fused::linear(&xv, &wv, None).unwrap();
                    let grads = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
                    (
                        values(&y),
                        values(grads.get(xv.as_tensor()).unwrap()),
                        values(grads.get(wv.as_tensor()).unwrap()),
                    )
                });
                let case = format!("{dtype:?}, ({m}, {k}) x ({n}, {k})^T, {threads} thread(s)");
                let candle = |t: candle_core::Result<Tensor>| pool.install(|| values(&t.unwrap()));
                assert!(y == candle(x.matmul(&w.t().unwrap())), "values, {case}");
                assert!(grad_x == candle(u.matmul(&w)), "input gradient, {case}");
                assert!(
                    grad_w == candle(u.t().unwrap().matmul(&x)),
                    "weight gradient, {case}"
                );
            }
        }
    }
}

/// Cross-attention (queries and keys of different lengths) in four heads: the values and the
/// gradients of queries, keys and values equal the composite form's in f64, also with the pairs
/// split over two threads; bad arguments are errors naming them.
#[test]
fn attention_equals_the_composite_form_for_each_argument() {
    let mut rng = Rng::new(21);
    let normal = |shape: (usize, usize, usize), rng: &mut Rng| {
        rng.normal(shape, DType::F64, &Device::Cpu).unwrap()
    };
    let (b, n, m, width, heads) = (3, 40, 70, 64, 4);
    let q = normal((b, n, width), &mut rng);
    let k = normal((b, m, width), &mut rng);
    let v = normal((b, m, width), &mut rng);
    let bias = rng.normal((b, 1, 1, m), DType::F64, &Device::Cpu).unwrap();
    let weights = normal((b, n, width), &mut rng);
    let run = |threads: usize, fused_op: bool| -> [Vec<f64>; 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
            let [qv, kv, vv] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let out = if fused_op {
                fused::attention(&qv, &kv, &vv, Some(&bias), heads).unwrap()
            } else {
                ops::attention(&qv, &kv, &vv, Some(&bias), heads).unwrap()
            };
            let grads = (&out * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad = |t: &Tensor| values(grads.get(t).unwrap());
            [values(&out), grad(&qv), grad(&kv), grad(&vv)]
        })
    };
    let composite = run(1, false);
    let (one, two) = (run(1, true), run(2, true));
    for (i, what) in ["value", "q gradient", "k gradient", "v gradient"]
        .iter()
        .enumerate()
    {
        let error = composite[i]
            .iter()
            .zip(&one[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
            / composite[i].iter().map(|a| a.abs()).fold(0.0, f64::max);
        println!("attention {what}: relative error {error:.1e}");
        assert!(error < 1e-13, "attention {what}: {error:e}");
        assert!(one[i] == two[i], "attention {what}: 1 and 2 threads differ");
    }
    let message = fused::attention(&q, &k, &v, None, 3)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("heads") && message.contains("divides"),
        "{message}"
    );
    let short = normal((b, m, width / 2), &mut rng);
    let message = fused::attention(&q, &short, &v, None, 4)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("k") && message.contains("one shape"),
        "{message}"
    );
    let message = fused::attention(&q.flatten_to(1).unwrap(), &k, &v, None, 4)
        .unwrap_err()
        .to_string();
    assert!(message.contains("(batch, tokens, width)"), "{message}");
    let message = fused::attention(&q, &k, &short, None, 4)
        .unwrap_err()
        .to_string();
    assert!(message.contains("`v`"), "{message}");
    let wrong_bias = rng
        .normal((b, 1, 1, m + 1), DType::F64, &Device::Cpu)
        .unwrap();
    let message = fused::attention(&q, &k, &v, Some(&wrong_bias), 4)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("key_bias") && message.contains("broadcasts"),
        "{message}"
    );
    let message = fused::attention(&q, &k, &v, Some(&bias.to_dtype(DType::F32).unwrap()), 4)
        .unwrap_err()
        .to_string();
    assert!(message.contains("key_bias"), "{message}");
}

/// The embedding lookup equals candle's `index_select` in value and gradient (ids repeated, so rows
/// add), its Hessian-vector product matches finite differences (through both of its ops), a pass
/// that does not want the matrix's gradient does not compute it, and bad ids are errors naming them.
#[test]
fn embedding_equals_index_select_and_skips_unwanted_gradients() {
    let matrix = points((9, 5), DType::F64);
    let ids = Tensor::new(&[[3u32, 0, 3], [8, 3, 1]], &Device::Cpu).unwrap();
    let lookup = |m: &Tensor| fused::embedding(m, &ids);
    let candle = |m: &Tensor| m.index_select(&ids.flatten_all()?, 0)?.reshape((2, 3, 5));
    let fused_value = lookup(&matrix).unwrap();
    assert_eq!(fused_value.dims(), [2, 3, 5]);
    assert_eq!(values(&fused_value), values(&candle(&matrix).unwrap()));
    // Half precision takes candle's index_select (the fused ops are f32 and f64).
    let half = matrix.to_dtype(DType::F16).unwrap();
    assert_eq!(
        values(&lookup(&half).unwrap()),
        values(&candle(&half).unwrap())
    );
    let (ours, theirs) = (
        gradient(&|m| scalar(&lookup(m)?), &matrix),
        gradient(&|m| scalar(&candle(m)?), &matrix),
    );
    let error = relative_error(&ours, &theirs).unwrap();
    assert!(error < 1e-15, "gradient {error:e}");
    // Row 3 is looked up three times, rows 2 and 4 never: their gradient is zero.
    assert!(values(&ours.get(2).unwrap()).iter().all(|&g| g == 0.0));
    let v = points((9, 5), DType::F64).affine(0.5, 0.2).unwrap();
    let second = gradcheck_second_order(|m| scalar(&lookup(m)?), &matrix, &v, 1e-5).unwrap();
    assert!(
        second.norm > 0.0 && second.relative_error < 1e-7,
        "{second:?}"
    );

    let m = Var::from_tensor(&matrix).unwrap();
    let probe = Var::zeros((2, 3, 5), DType::F64, &Device::Cpu).unwrap();
    let loss = || {
        scalar(&(fused::embedding(m.as_tensor(), &ids).unwrap() + probe.as_tensor()).unwrap())
            .unwrap()
    };
    let inner = fused::backward_for(&loss(), &[probe.as_tensor()]).unwrap();
    assert!(inner.get(probe.as_tensor()).is_some());
    assert!(inner.get(m.as_tensor()).is_none());
    assert!(loss().backward().unwrap().get(m.as_tensor()).is_some());

    let too_large = Tensor::new(&[1u32, 9], &Device::Cpu).unwrap();
    let message = fused::embedding(&matrix, &too_large)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ids") && message.contains("id 9"),
        "{message}"
    );
    let negative = Tensor::new(&[1i64, -2], &Device::Cpu).unwrap();
    let message = fused::embedding(&matrix, &negative)
        .unwrap_err()
        .to_string();
    assert!(message.contains("negative"), "{message}");
    let floats = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
    let message = fused::embedding(&matrix, &floats).unwrap_err().to_string();
    assert!(
        message.contains("ids") && message.contains("u32"),
        "{message}"
    );
    let message = fused::embedding(&matrix.flatten_all().unwrap(), &ids)
        .unwrap_err()
        .to_string();
    assert!(message.contains("(vocabulary, width)"), "{message}");
}

#[test]
fn a_linear_layer_without_outputs_is_an_error_not_a_panic() {
    let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((0, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
    let text = fused::linear(&x, &w, Some(&b)).unwrap_err().to_string();
    assert!(
        text.contains("weight") && text.contains("output feature"),
        "{text}"
    );
}

#[test]
fn cross_entropy_refuses_negative_and_float_labels() {
    let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    // Hugging Face's ignore index would wrap around to 4294967196 in the cast to u32.
    let ignored = Tensor::new(&[0i64, -100], &Device::Cpu).unwrap();
    let text = fused::cross_entropy(&logits, &ignored)
        .unwrap_err()
        .to_string();
    assert!(text.contains("labels") && text.contains("-100"), "{text}");
    let floats = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
    let text = fused::cross_entropy(&logits, &floats)
        .unwrap_err()
        .to_string();
    assert!(text.contains("labels") && text.contains("F32"), "{text}");
    let fine = Tensor::new(&[0i64, 2], &Device::Cpu).unwrap();
    assert!(fused::cross_entropy(&logits, &fine).is_ok());
}

//! Fused differentiable ops (src/fused.rs): values equal the composite form's, first and second
//! derivatives match finite differences, and the fused ops are exact where candle's gelu_erf
//! backward is not.

use advtrain::fused::{gelu_erf, gelu_erf_composite};
use advtrain::verify::{gradcheck, gradcheck_second_order, relative_error};
use advtrain::{Rng, Target};
use candle_core::{DType, Device, Tensor};

fn points(dtype: DType) -> Tensor {
    // Both tails and the middle: the derivatives change sign near |x| = sqrt 2 and 2.
    let mut rng = Rng::new(3);
    (rng.normal((4, 25), DType::F64, &Device::Cpu).unwrap() * 2.0)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A scalar that weights every element differently, so a wrong entry cannot cancel.
fn weighted_sum(y: &Tensor) -> candle_core::Result<Tensor> {
    let n = y.elem_count();
    let w = Tensor::arange(1.0, n as f64 + 1.0, y.device())?
        .to_dtype(y.dtype())?
        .reshape(y.shape())?;
    (y * w)?.sum_all()
}

#[test]
fn values_equal_the_composite_form() {
    for (dtype, tolerance) in [(DType::F64, 1e-15), (DType::F32, 1e-6)] {
        let x = points(dtype);
        let e = relative_error(&gelu_erf(&x).unwrap(), &gelu_erf_composite(&x).unwrap()).unwrap();
        assert!(e < tolerance, "{dtype:?}: {e:e}");
    }
    // A strided (transposed) input gives the same values.
    let x = points(DType::F64).t().unwrap();
    let e = relative_error(&gelu_erf(&x).unwrap(), &gelu_erf_composite(&x).unwrap()).unwrap();
    assert!(e < 1e-15, "{e:e}");
}

#[test]
fn first_and_second_derivatives_match_finite_differences() {
    let x = points(DType::F64);
    let f = |x: &Tensor| weighted_sum(&gelu_erf(x).map_err(candle_core::Error::from)?);
    let first = gradcheck(f, &x, 1e-5).unwrap();
    assert!(first.relative_error < 1e-9, "{first:?}");
    let v = Rng::new(4)
        .normal(x.shape(), DType::F64, &Device::Cpu)
        .unwrap();
    let second = gradcheck_second_order(f, &x, &v, 1e-5).unwrap();
    assert!(second.relative_error < 1e-8, "{second:?}");
    // Third order through the composite tail: the Hessian-vector product's own gradient.
    let third = gradcheck(
        |x: &Tensor| {
            let t = Target::input(x).map_err(candle_core::Error::from)?;
            let hv = advtrain::laplacian::hessian_vector_product(&t, &f, &v)
                .map_err(candle_core::Error::from)?;
            weighted_sum(&hv)
        },
        &x,
        1e-5,
    )
    .unwrap();
    assert!(third.relative_error < 1e-7, "{third:?}");
}

#[test]
fn the_fused_gradient_is_exact_where_candles_gelu_erf_is_not() {
    let x = points(DType::F64);
    let grad = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let g = weighted_sum(&f(var.as_tensor()).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        g.get(var.as_tensor()).unwrap().clone()
    };
    let fused = grad(&|x| gelu_erf(x).map_err(candle_core::Error::from));
    let composite = grad(&|x| gelu_erf_composite(x).map_err(candle_core::Error::from));
    let candle = grad(&|x| x.gelu_erf());
    let ours = relative_error(&fused, &composite).unwrap();
    let theirs = relative_error(&candle, &composite).unwrap();
    assert!(ours < 1e-14, "{ours:e}");
    // candle's backward uses 0.398942 for 1/sqrt(2 pi): a relative error near 1e-7, far above f64's.
    assert!(theirs > 1e-9, "{theirs:e}");
    println!("gelu_erf gradient vs exact: fused {ours:.1e}, candle {theirs:.1e}");
}

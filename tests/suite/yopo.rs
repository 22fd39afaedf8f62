//! YOPO-m-n (src/yopo.rs): the inner step through the first layer's co-state, by hand.

use advtrain::verify::{flat_gradient, relative_error};
use advtrain::{Error, Rng, Scope, StepNorm, Target, Yopo};
use candle_core::{DType, Device, Tensor, Var};

struct TwoLayer {
    w0: Var,
    w1: Var,
    y: Tensor,
}

impl TwoLayer {
    fn new() -> Self {
        let mut rng = Rng::new(1);
        let d = Device::Cpu;
        Self {
            w0: Var::from_tensor(&rng.normal((5, 4), DType::F64, &d).unwrap()).unwrap(),
            w1: Var::from_tensor(&rng.normal((3, 5), DType::F64, &d).unwrap()).unwrap(),
            y: Tensor::new(&[0u32, 2], &d).unwrap(),
        }
    }
    fn first(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.w0.as_tensor().t()?)
    }
    fn rest(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(&z.tanh()?.matmul(&self.w1.as_tensor().t()?)?, &self.y)
    }
}

#[test]
fn one_outer_one_inner_step_by_hand() {
    let m = TwoLayer::new();
    let x = Rng::new(2)
        .normal((2, 4), DType::F64, &Device::Cpu)
        .unwrap();
    let target = Target::input(&x).unwrap();
    let (eps, alpha) = (0.3, 0.1);
    let first = |x: &Tensor| m.first(x);
    let rest = |z: &Tensor| m.rest(z);
    let (step, delta) = Yopo::new(eps, alpha, 1, 1)
        .unwrap()
        .run(&yopo_batch(&target, &first, &rest), &mut Rng::new(0))
        .unwrap();
    // By hand: p = dL/dz at z = x W0^T; the first layer is linear, so grad_delta (p . z) = p W0.
    let z = Var::from_tensor(&m.first(&x).unwrap()).unwrap();
    let p = m
        .rest(z.as_tensor())
        .unwrap()
        .backward()
        .unwrap()
        .get(z.as_tensor())
        .unwrap()
        .clone();
    let expected_delta = (p.matmul(m.w0.as_tensor()).unwrap().sign().unwrap() * alpha).unwrap();
    assert!(relative_error(&delta, &expected_delta).unwrap() < 1e-15);
    // The weights are trained on the full pass at delta = 0: the plain gradient.
    let vars = [m.w0.clone(), m.w1.clone()];
    let plain = m.rest(&m.first(&x).unwrap()).unwrap().backward().unwrap();
    let err = relative_error(
        &flat_gradient(&vars, &step.grads).unwrap(),
        &flat_gradient(&vars, &plain).unwrap(),
    )
    .unwrap();
    assert!(err < 1e-14, "{err}");
}

#[test]
fn weights_take_the_mean_of_the_full_passes_and_delta_stays_in_the_ball() {
    let m = TwoLayer::new();
    let x = Rng::new(3)
        .normal((2, 4), DType::F64, &Device::Cpu)
        .unwrap();
    let target = Target::input(&x).unwrap();
    let first = |x: &Tensor| m.first(x);
    let rest = |z: &Tensor| m.rest(z);
    let yopo = Yopo::new(0.2, 0.15, 3, 3)
        .unwrap()
        .with_norm(StepNorm::L2(Scope::PerExample));
    let (step, delta) = yopo
        .run(&yopo_batch(&target, &first, &rest), &mut Rng::new(0))
        .unwrap();
    let norms: Vec<f64> = target
        .per_example_sum(&delta.sqr().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(norms.iter().all(|n| n.sqrt() <= 0.2 * (1.0 + 1e-12)));
    assert_eq!((step.passes.forward, step.passes.backward), (3, 3));
    // Replaying the algorithm by hand. The first layer is linear, so every inner step of an outer
    // pass moves along the same direction d(p W0), with p the co-state of that full pass.
    let vars = [m.w0.clone(), m.w1.clone()];
    let ball = advtrain::Ball::L2 {
        radius: 0.2,
        scope: Scope::PerExample,
    };
    let unit = StepNorm::L2(Scope::PerExample);
    let mut sum: Option<Tensor> = None;
    let mut d = x.zeros_like().unwrap();
    for _ in 0..3 {
        let z = Var::from_tensor(&m.first(&(&x + &d).unwrap()).unwrap()).unwrap();
        let grads = m.rest(z.as_tensor()).unwrap().backward().unwrap();
        let p = grads.get(z.as_tensor()).unwrap().clone();
        // The weights' gradient of the full pass (through z back to W0 as well).
        let g = flat_gradient(
            &vars,
            &m.rest(&m.first(&(&x + &d).unwrap()).unwrap())
                .unwrap()
                .backward()
                .unwrap(),
        )
        .unwrap();
        sum = Some(match sum {
            None => g,
            Some(s) => (s + g).unwrap(),
        });
        let direction = unit
            .direction(&target, &p.matmul(m.w0.as_tensor()).unwrap())
            .unwrap();
        for _ in 0..3 {
            d = ball
                .project(&target, &(&d + (&direction * 0.15).unwrap()).unwrap())
                .unwrap();
        }
    }
    assert!(relative_error(&delta, &d).unwrap() < 1e-13);
    let mean = (sum.unwrap() / 3.0).unwrap();
    let err = relative_error(&flat_gradient(&vars, &step.grads).unwrap(), &mean).unwrap();
    assert!(err < 1e-13, "{err}");
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        Yopo::new(0.1, 0.1, 0, 1),
        Err(Error::InvalidArgument { name: "outer", .. })
    ));
    assert!(matches!(
        Yopo::new(0.1, 0.1, 1, 0),
        Err(Error::InvalidArgument { name: "inner", .. })
    ));
    assert!(matches!(
        Yopo::new(0.1, -0.1, 1, 1),
        Err(Error::InvalidArgument { name: "alpha", .. })
    ));
}

/// YOPO's batch: YOPO reads only the split (the loss slot holds `rest` here, unused).
fn yopo_batch<'a>(
    target: &'a Target,
    first: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    rest: &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> advtrain::Batch<'a> {
    advtrain::Batch::new(target, rest).with_first_layer(first, rest)
}

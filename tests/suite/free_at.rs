//! FreeAT (src/free_at.rs): replays reproduce a hand-computed update on a linear least-squares model.

use advtrain::verify::{relative_error, scalar};
use advtrain::{Batch, Method, Rng};
use advtrain::{Error, FreeAt, Target};
use candle_core::{Device, Tensor, Var};

#[test]
fn replays_reproduce_a_hand_computed_update() {
    // L(w) = mean_i ((x_i + delta_i) . w - y_i)^2.
    let d = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[[0.5f64], [-1.0], [2.0]], &d).unwrap()).unwrap();
    let x = Tensor::new(&[[1.0f64, 0.0, 0.5], [0.2, -0.3, 1.0]], &d).unwrap();
    let y = Tensor::new(&[[1.5f64], [0.0]], &d).unwrap();
    let loss = |x: &Tensor| (x.matmul(w.as_tensor())? - &y)?.sqr()?.mean_all();
    let target = Target::input(&x).unwrap();
    let eps = 0.1;
    let mut free = FreeAt::new(eps, 2).unwrap();
    assert_eq!(free.replays(), 2);

    // Replay 1 at delta = 0: residuals r = x w - y = [0.0, 2.3].
    let step = free
        .step(&Batch::new(&target, &loss), &mut Rng::new(0))
        .unwrap();
    let (r0, r1) = (
        0.5 * 1.0 + 0.0 + 2.0 * 0.5 - 1.5,
        0.2 * 0.5 + 0.3 + 2.0 - 0.0,
    );
    assert_eq!(r0, 0.0);
    // dL/dw = 2/2 sum_i r_i x_i; dL/ddelta_i = 2/2 r_i w.
    let dw = [
        r0 * 1.0 + r1 * 0.2,
        r0 * 0.0 + r1 * -0.3,
        r0 * 0.5 + r1 * 1.0,
    ];
    let expected = Tensor::new(&[[dw[0]], [dw[1]], [dw[2]]], &d).unwrap();
    assert!(relative_error(step.grads.get(w.as_tensor()).unwrap(), &expected).unwrap() < 1e-14);
    assert!((scalar(&step.loss).unwrap() - (r0 * r0 + r1 * r1) / 2.0).abs() < 1e-14);
    // delta = clamp(eps * sign(dL/ddelta)): row 0 has r0 = 0, so it stays 0; row 1 is eps * sign(w).
    let delta: Vec<Vec<f64>> = free.perturbation().unwrap().to_vec2().unwrap();
    assert_eq!(delta, vec![vec![0.0, 0.0, 0.0], vec![eps, -eps, eps]]);

    // Replay 2 at that delta: row 1 moves to x_1 + delta_1.
    let step = free
        .step(&Batch::new(&target, &loss), &mut Rng::new(0))
        .unwrap();
    let x1 = [0.2 + eps, -0.3 - eps, 1.0 + eps];
    let r1 = x1[0] * 0.5 - x1[1] + 2.0 * x1[2];
    let dw = [r0 * 1.0 + r1 * x1[0], r1 * x1[1], r0 * 0.5 + r1 * x1[2]];
    let expected = Tensor::new(&[[dw[0]], [dw[1]], [dw[2]]], &d).unwrap();
    assert!(relative_error(step.grads.get(w.as_tensor()).unwrap(), &expected).unwrap() < 1e-14);
    // Already at the ball's edge: the sign step cannot push it further.
    let delta: Vec<Vec<f64>> = free.perturbation().unwrap().to_vec2().unwrap();
    assert_eq!(delta[1], vec![eps, -eps, eps]);
    assert_eq!((step.passes.forward, step.passes.backward), (1, 1));
}

#[test]
fn a_batch_of_another_shape_keeps_the_shared_part() {
    // Dynamic padding and a smaller last batch: the carried perturbation is cropped or zero-padded
    // to the new batch, so shared examples keep it and new ones start from zero.
    let d = Device::Cpu;
    let loss = |x: &Tensor| x.sqr()?.sum_all();
    let mut free = FreeAt::new(0.1, 3).unwrap();
    let first = Target::input(&Tensor::ones((2, 3), candle_core::DType::F64, &d).unwrap()).unwrap();
    free.step(&Batch::new(&first, &loss), &mut Rng::new(0))
        .unwrap();
    // After one sign step every entry of delta is 0.1 (inside the L-infinity ball of radius 0.1).
    let other = Tensor::ones((3, 3), candle_core::DType::F64, &d).unwrap();
    let step = free
        .step(
            &Batch::new(&Target::input(&other).unwrap(), &loss),
            &mut Rng::new(0),
        )
        .unwrap();
    // Two carried rows at 1.1, one new row at 1: 6 * 1.21 + 3.
    assert!((scalar(&step.loss).unwrap() - (6.0 * 1.21 + 3.0)).abs() < 1e-12);
    // A smaller batch (the last of an epoch) keeps its first row's perturbation.
    let last = Tensor::ones((1, 3), candle_core::DType::F64, &d).unwrap();
    let carried: Vec<Vec<f64>> = free.perturbation().unwrap().to_vec2().unwrap();
    let step = free
        .step(
            &Batch::new(&Target::input(&last).unwrap(), &loss),
            &mut Rng::new(0),
        )
        .unwrap();
    let expected: f64 = carried[0].iter().map(|dv| (1.0 + dv).powi(2)).sum();
    assert!((scalar(&step.loss).unwrap() - expected).abs() < 1e-12);
    // Ragged sequences: an embedding output (b, n, d) padded to another length keeps the shared
    // positions and zeroes the padding through the mask.
    let mut free = FreeAt::new(0.1, 2).unwrap();
    let short = Tensor::ones((2, 3, 4), candle_core::DType::F64, &d).unwrap();
    let mask_short = Tensor::ones((2, 3), candle_core::DType::F64, &d).unwrap();
    let target = Target::embedding_output(&short, Some(&mask_short)).unwrap();
    free.step(&Batch::new(&target, &loss), &mut Rng::new(0))
        .unwrap();
    let long = Tensor::ones((2, 5, 4), candle_core::DType::F64, &d).unwrap();
    let mask_long = Tensor::new(
        &[[1.0f64, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]],
        &d,
    )
    .unwrap();
    let target = Target::embedding_output(&long, Some(&mask_long)).unwrap();
    let step = free
        .step(&Batch::new(&target, &loss), &mut Rng::new(0))
        .unwrap();
    // Carried: positions 0..3 of sentence 0 and 0..2 of sentence 1 (5 positions at 1.1); new or
    // padded: the other 5 positions (at 1); 4 features each.
    let expected = 4.0 * (5.0 * 1.21 + 5.0);
    assert!((scalar(&step.loss).unwrap() - expected).abs() < 1e-12);
    assert!(matches!(
        FreeAt::new(0.1, 0),
        Err(Error::InvalidArgument {
            name: "replays",
            ..
        })
    ));
    assert!(matches!(
        FreeAt::new(-0.1, 1),
        Err(Error::InvalidArgument { name: "eps", .. })
    ));
}

//! FreeLB (src/freelb.rs).

use advtrain::Method;
use advtrain::toy::{Setup, problem};
use advtrain::verify::{flat_gradient, l2_norm, relative_error};
use advtrain::{Error, FreeLb, Rng, Scope, StepNorm};
use candle_core::Tensor;

fn plain_gradient(p: &advtrain::toy::Problem, delta: &Tensor) -> Tensor {
    let grads = p
        .target
        .loss_at(&p.loss, delta)
        .unwrap()
        .backward()
        .unwrap();
    flat_gradient(&p.vars, &grads).unwrap()
}

#[test]
fn one_step_from_zero_is_plain_training() {
    let p = problem(Setup::EmbeddingOutput, 1).unwrap();
    let step = FreeLb::new(0.1, 1)
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    let plain = plain_gradient(&p, &p.target.point().zeros_like().unwrap());
    assert!(relative_error(&flat_gradient(&p.vars, &step.grads).unwrap(), &plain).unwrap() < 1e-14);
}

#[test]
fn two_steps_from_zero_average_clean_and_normalised_ascent_point() {
    // By hand: g = dL/de at e (per-sentence), e1 = e + adv_lr * g / ||g|| per sentence.
    let p = problem(Setup::EmbeddingOutput, 2).unwrap();
    let adv_lr = 0.3;
    // Detached: with second order on, a gradient keeps its graph, and a perturbation built from it
    // would carry a second-order path into the weights' gradient.
    let g = p
        .target
        .loss_and_gradient(&p.loss)
        .unwrap()
        .gradient
        .detach();
    let norms = p
        .target
        .per_example_sum(&g.sqr().unwrap())
        .unwrap()
        .sqrt()
        .unwrap();
    let delta1 = (g.broadcast_div(&norms).unwrap() * adv_lr).unwrap();
    let zero = g.zeros_like().unwrap();
    let expected =
        ((plain_gradient(&p, &zero) + plain_gradient(&p, &delta1)).unwrap() * 0.5).unwrap();
    let step = FreeLb::new(adv_lr, 2)
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    assert!(
        relative_error(&flat_gradient(&p.vars, &step.grads).unwrap(), &expected).unwrap() < 1e-13
    );
    // With max_norm below adv_lr, the second point is projected back onto the ball.
    let projected = (g.broadcast_div(&norms).unwrap() * 0.1).unwrap();
    let expected =
        ((plain_gradient(&p, &zero) + plain_gradient(&p, &projected)).unwrap() * 0.5).unwrap();
    let step = FreeLb::new(adv_lr, 2)
        .unwrap()
        .with_max_norm(0.1)
        .unwrap()
        .step(&p.batch(), &mut Rng::new(0))
        .unwrap();
    assert!(
        relative_error(&flat_gradient(&p.vars, &step.grads).unwrap(), &expected).unwrap() < 1e-13
    );
}

#[test]
fn any_k_is_the_mean_of_k_separate_gradients() {
    let p = problem(Setup::EmbeddingOutput, 3).unwrap();
    let k = 4;
    let freelb = FreeLb::new(0.05, k)
        .unwrap()
        .with_init_mag(0.2)
        .unwrap()
        .with_max_norm(0.12)
        .unwrap();
    let step = freelb.clone().step(&p.batch(), &mut Rng::new(9)).unwrap();
    // The same iterates, each gradient computed by a separate forward-backward pass.
    let mut delta = freelb.initial(&p.target, &mut Rng::new(9)).unwrap();
    let mut sum: Option<Tensor> = None;
    for t in 0..k {
        let grad = plain_gradient(&p, &delta);
        sum = Some(match sum {
            None => grad,
            Some(s) => (s + grad).unwrap(),
        });
        if t + 1 < k {
            let g = p
                .target
                .loss_and_gradient_at(&p.loss, &delta)
                .unwrap()
                .gradient;
            delta = freelb.ascend(&p.target, &delta, &g).unwrap();
        }
    }
    let mean = (sum.unwrap() / k as f64).unwrap();
    assert!(relative_error(&flat_gradient(&p.vars, &step.grads).unwrap(), &mean).unwrap() < 1e-13);
    assert_eq!((step.passes.forward, step.passes.backward), (k, k));
}

#[test]
fn initial_perturbation_has_the_documented_size_and_skips_padding() {
    let p = problem(Setup::EmbeddingOutput, 4).unwrap();
    let init = FreeLb::new(0.1, 2)
        .unwrap()
        .with_init_mag(1.0)
        .unwrap()
        .initial(&p.target, &mut Rng::new(1))
        .unwrap();
    assert_eq!(
        p.target
            .apply_mask(&init)
            .unwrap()
            .to_vec3::<f64>()
            .unwrap(),
        init.to_vec3::<f64>().unwrap()
    );
    // Uniform(-1, 1) entries scaled by 1/sqrt(len * d): each sentence's norm is at most 1, about 1/sqrt(3).
    let norms: Vec<f64> = p
        .target
        .per_example_sum(&init.sqr().unwrap())
        .unwrap()
        .sqrt()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(norms.iter().all(|n| *n <= 1.0 && *n > 0.2), "{norms:?}");
    let linf = FreeLb::new(0.1, 2)
        .unwrap()
        .with_norm(StepNorm::Sign)
        .unwrap()
        .with_init_mag(0.01)
        .unwrap();
    let init = linf.initial(&p.target, &mut Rng::new(1)).unwrap();
    assert!(
        init.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            <= 0.01
    );
    assert!(l2_norm(&init).unwrap() > 0.0);
}

#[test]
fn warmup_trains_plainly_first() {
    let p = problem(Setup::EmbeddingOutput, 5).unwrap();
    let mut freelb = FreeLb::new(0.1, 3).unwrap().with_warmup(2);
    let mut rng = Rng::new(0);
    let passes: Vec<usize> = (0..4)
        .map(|_| freelb.step(&p.batch(), &mut rng).unwrap().passes.forward)
        .collect();
    assert_eq!(passes, vec![1, 1, 3, 3]);
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        FreeLb::new(0.1, 0),
        Err(Error::InvalidArgument { name: "steps", .. })
    ));
    assert!(matches!(
        FreeLb::new(0.0, 2),
        Err(Error::InvalidArgument { name: "adv_lr", .. })
    ));
    assert!(matches!(
        FreeLb::new(0.1, 2).unwrap().with_init_mag(-1.0),
        Err(Error::InvalidArgument {
            name: "init_mag",
            ..
        })
    ));
    // FreeLB normalises its steps: the raw step is refused. (The per-batch L2 norm is accepted: it is
    // FreeLB on an embedding matrix, which has no sentences.)
    assert!(matches!(
        FreeLb::new(0.1, 2).unwrap().with_norm(StepNorm::Raw),
        Err(Error::InvalidArgument { name: "norm", .. })
    ));
    assert!(
        FreeLb::new(0.1, 2)
            .unwrap()
            .with_norm(StepNorm::L2(Scope::PerBatch))
            .is_ok()
    );
    let p = problem(Setup::EmbeddingMatrix, 1).unwrap();
    assert!(matches!(
        FreeLb::new(0.1, 2)
            .unwrap()
            .step(&p.batch(), &mut Rng::new(0)),
        Err(Error::InvalidArgument { name: "target", .. })
    ));
}

//! Taylor mode (src/jet.rs): every jet rule against double backward (f64, to 1e-12) and finite
//! differences, whole models, and the Laplacian regulariser trained through Taylor mode against the
//! same step by double backward.

use advtrain::laplacian::{self, CurvatureMethod, ProbeKind};
use advtrain::verify::{fit_order, relative_error};
use advtrain::{Batch, Error, Jet, Laplacian, Method, Rng, Target, fused};
use candle_core::{DType, Device, Tensor, Var};

type Loss<'a> = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a;
type JetLoss<'a> = dyn Fn(&Jet) -> candle_core::Result<Jet> + 'a;

fn normal(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    (rng.normal(shape, DType::F64, &Device::Cpu).unwrap() * scale).unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.reshape(()).unwrap().to_scalar::<f64>().unwrap()
}

/// `(L(x), g^T v, v^T H v + g^T w)` by double backward: the derivatives of `L(x + t v + t^2/2 w)`.
fn reference(f: &Loss<'_>, x: &Tensor, v: &Tensor, w: Option<&Tensor>) -> [f64; 3] {
    let point = Var::from_tensor(x).unwrap();
    let loss = f(point.as_tensor()).unwrap();
    let g = loss.backward().unwrap().remove(point.as_tensor()).unwrap();
    let along = (&g * v).unwrap().sum_all().unwrap();
    let hv = along.backward().unwrap().remove(point.as_tensor()).unwrap();
    let mut second = value(&(v * hv).unwrap().sum_all().unwrap());
    if let Some(w) = w {
        second += value(&(&g * w).unwrap().sum_all().unwrap());
    }
    [value(&loss), value(&along), second]
}

fn taylor(f: &JetLoss<'_>, x: &Tensor, v: &Tensor, w: Option<&Tensor>) -> [f64; 3] {
    let jet = match w {
        Some(w) => Jet::with_second(x, v, w).unwrap(),
        None => Jet::new(x, v).unwrap(),
    };
    let out = f(&jet).unwrap();
    [
        value(out.primal()),
        value(out.first()),
        value(&out.second_or_zeros().unwrap()),
    ]
}

fn close(a: [f64; 3], b: [f64; 3], tolerance: f64, what: &str) {
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let error = (a - b).abs() / b.abs().max(1e-3);
        assert!(
            error < tolerance,
            "{what}, part {i}: Taylor {a} against double backward {b} (relative {error:e})"
        );
    }
}

/// One rule at a time: `sum(r * op(x))` with a random read-out `r`, both forms, from jets with and
/// without a second part.
fn check_rule(what: &str, shape: &[usize], plain: &Loss<'_>, jet: &JetLoss<'_>) {
    let mut rng = Rng::new(7);
    let x = normal(&mut rng, shape, 1.0);
    let v = normal(&mut rng, shape, 1.0);
    let w = normal(&mut rng, shape, 1.0);
    close(
        taylor(jet, &x, &v, None),
        reference(plain, &x, &v, None),
        1e-12,
        what,
    );
    close(
        taylor(jet, &x, &v, Some(&w)),
        reference(plain, &x, &v, Some(&w)),
        1e-12,
        what,
    );
}

fn read_out(shape: &[usize]) -> Tensor {
    normal(&mut Rng::new(99), shape, 1.0)
}

fn sum_plain(y: Tensor, r: &Tensor) -> candle_core::Result<Tensor> {
    (y * r)?.sum_all()
}

fn sum_jet(y: Jet, r: &Tensor) -> candle_core::Result<Jet> {
    y.broadcast_mul_constant(r)?.map_linear(|t| t.sum_all())
}

#[test]
fn elementwise_rules_match_double_backward() {
    let shape = [4, 6];
    let r = read_out(&shape);
    type Pair = (
        &'static str,
        fn(&Tensor) -> candle_core::Result<Tensor>,
        fn(&Jet) -> candle_core::Result<Jet>,
    );
    let rules: [Pair; 5] = [
        ("gelu_erf", fused::gelu_erf, Jet::gelu_erf),
        ("gelu_tanh", fused::gelu_tanh, Jet::gelu_tanh),
        ("tanh", |x| x.tanh(), Jet::tanh),
        ("softmax", fused::softmax_last_dim, Jet::softmax_last_dim),
        (
            "log_softmax",
            fused::log_softmax_last_dim,
            Jet::log_softmax_last_dim,
        ),
    ];
    for (name, plain, jet) in rules {
        check_rule(name, &shape, &|x| sum_plain(plain(x)?, &r), &|x| {
            sum_jet(jet(x)?, &r)
        });
    }
}

#[test]
fn layer_norm_rule_matches_double_backward() {
    let shape = [3, 5, 8];
    let r = read_out(&shape);
    let mut rng = Rng::new(3);
    let (weight, bias) = (normal(&mut rng, &[8], 1.0), normal(&mut rng, &[8], 1.0));
    let plain = |x: &Tensor| sum_plain(fused::layer_norm(x, Some(&weight), Some(&bias), 1e-5)?, &r);
    let jet = |x: &Jet| sum_jet(x.layer_norm(Some(&weight), Some(&bias), 1e-5)?, &r);
    check_rule("layer_norm", &shape, &plain, &jet);
    let plain = |x: &Tensor| sum_plain(fused::layer_norm(x, None, None, 0.5)?, &r);
    let jet = |x: &Jet| sum_jet(x.layer_norm(None, None, 0.5)?, &r);
    check_rule("layer_norm without scale, eps 0.5", &shape, &plain, &jet);
}

#[test]
fn product_rules_match_double_backward() {
    let mut rng = Rng::new(5);
    let a = normal(&mut rng, &[6, 6], 0.5);
    let r = read_out(&[6, 6]);
    // x * (x A): an elementwise product of two jets.
    let plain = |x: &Tensor| sum_plain((x * x.matmul(&a)?)?, &r);
    let jet = |x: &Jet| sum_jet(x.mul(&x.map_linear(|t| t.matmul(&a))?)?, &r);
    check_rule("mul", &[6, 6], &plain, &jet);
    // (x A) x^T: a matrix product of two jets, batched.
    let plain = |x: &Tensor| sum_plain(x.matmul(&a)?.matmul(&x.t()?)?, &r);
    let jet = |x: &Jet| {
        let right = x.map_linear(|t| t.t())?;
        sum_jet(x.map_linear(|t| t.matmul(&a))?.matmul(&right)?, &r)
    };
    check_rule("matmul", &[6, 6], &plain, &jet);
}

#[test]
fn cross_entropy_rule_matches_double_backward() {
    let labels = Tensor::new(&[0u32, 3, 1, 4, 4], &Device::Cpu).unwrap();
    let plain = |z: &Tensor| fused::cross_entropy(z, &labels);
    let jet = |z: &Jet| z.cross_entropy(&labels);
    check_rule("cross_entropy", &[5, 5], &plain, &jet);
}

/// An MLP 12-16-16-5 (GELU erf, then tanh GELU) on an input batch: both forms.
struct Mlp {
    layers: Vec<(Var, Var)>,
    labels: Tensor,
}

impl Mlp {
    fn new(rng: &mut Rng) -> Self {
        let widths = [12, 16, 16, 5];
        let layers = (0..3)
            .map(|i| {
                let w = normal(rng, &[widths[i + 1], widths[i]], 0.4);
                let b = normal(rng, &[widths[i + 1]], 0.1);
                (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap())
            })
            .collect();
        let labels = Tensor::new(&[0u32, 1, 2, 3, 4, 0, 1, 2], &Device::Cpu).unwrap();
        Self { layers, labels }
    }

    fn loss(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = fused::linear(&h, w.as_tensor(), Some(b.as_tensor()))?;
            h = match i {
                0 => fused::gelu_erf(&h)?,
                1 => fused::gelu_tanh(&h)?,
                _ => h,
            };
        }
        fused::cross_entropy(&h, &self.labels)
    }

    fn jet(&self, x: &Jet) -> candle_core::Result<Jet> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.linear(w.as_tensor(), Some(b.as_tensor()))?;
            h = match i {
                0 => h.gelu_erf()?,
                1 => h.gelu_tanh()?,
                _ => h,
            };
        }
        h.cross_entropy(&self.labels)
    }
}

/// A one-block pre-norm transformer on a padded embedding output (b 3, n 5, d 8): attention with a
/// key mask, a GELU feed-forward, a final layer norm, masked mean pooling, 4 classes.
struct Encoder {
    norms: Vec<(Var, Var)>,
    linears: Vec<(Var, Var)>,
    mask: Tensor,
    labels: Tensor,
}

const D_MODEL: usize = 8;

impl Encoder {
    fn new(rng: &mut Rng) -> Self {
        let d = D_MODEL;
        let var = |t: Tensor| Var::from_tensor(&t).unwrap();
        let norms = (0..3)
            .map(|_| {
                let w = (normal(rng, &[d], 0.2) + 1.0).unwrap();
                (var(w), var(normal(rng, &[d], 0.1)))
            })
            .collect();
        // query, key, value, out, up, down, classifier
        let shapes = [
            (d, d),
            (d, d),
            (d, d),
            (d, d),
            (2 * d, d),
            (d, 2 * d),
            (4, d),
        ];
        let linears = shapes
            .iter()
            .map(|&(o, i)| {
                let w = normal(rng, &[o, i], 1.0 / (i as f64).sqrt());
                (var(w), var(normal(rng, &[o], 0.1)))
            })
            .collect();
        let mask = Tensor::new(
            &[
                [1.0f64, 1.0, 1.0, 1.0, 1.0],
                [1.0, 1.0, 1.0, 0.0, 0.0],
                [1.0, 1.0, 0.0, 0.0, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu).unwrap();
        Self {
            norms,
            linears,
            mask,
            labels,
        }
    }

    fn linear(&self, i: usize) -> (&Tensor, Option<&Tensor>) {
        let (w, b) = &self.linears[i];
        (w.as_tensor(), Some(b.as_tensor()))
    }

    fn norm(&self, i: usize) -> (Option<&Tensor>, Option<&Tensor>) {
        let (w, b) = &self.norms[i];
        (Some(w.as_tensor()), Some(b.as_tensor()))
    }

    fn key_bias(&self) -> candle_core::Result<Tensor> {
        (self.mask.unsqueeze(1)? - 1.0)? * 1e4
    }

    fn pool(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let m = self.mask.unsqueeze(2)?;
        h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)
    }

    fn loss(&self, e: &Tensor) -> candle_core::Result<Tensor> {
        let lin = |x: &Tensor, i: usize| {
            let (w, b) = self.linear(i);
            fused::linear(x, w, b)
        };
        let norm = |x: &Tensor, i: usize| {
            let (w, b) = self.norm(i);
            fused::layer_norm(x, w, b, 1e-5)
        };
        let x = norm(e, 0)?;
        let scores = (lin(&x, 0)?.matmul(&lin(&x, 1)?.t()?)? / (D_MODEL as f64).sqrt())?;
        let attention = fused::softmax_last_dim(&scores.broadcast_add(&self.key_bias()?)?)?;
        let h = (e + lin(&attention.matmul(&lin(&x, 2)?)?, 3)?)?;
        let x = norm(&h, 1)?;
        let h = (&h + lin(&fused::gelu_erf(&lin(&x, 4)?)?, 5)?)?;
        let pooled = self.pool(&norm(&h, 2)?)?;
        fused::cross_entropy(&lin(&pooled, 6)?, &self.labels)
    }

    fn jet(&self, e: &Jet) -> candle_core::Result<Jet> {
        let lin = |x: &Jet, i: usize| {
            let (w, b) = self.linear(i);
            x.linear(w, b)
        };
        let norm = |x: &Jet, i: usize| {
            let (w, b) = self.norm(i);
            x.layer_norm(w, b, 1e-5)
        };
        let x = norm(e, 0)?;
        let keys = lin(&x, 1)?.map_linear(|t| t.t())?;
        let scores = lin(&x, 0)?
            .matmul(&keys)?
            .affine(1.0 / (D_MODEL as f64).sqrt(), 0.0)?;
        let attention = scores
            .broadcast_add_constant(&self.key_bias()?)?
            .softmax_last_dim()?;
        let h = e.add(&lin(&attention.matmul(&lin(&x, 2)?)?, 3)?)?;
        let x = norm(&h, 1)?;
        let h = h.add(&lin(&lin(&x, 4)?.gelu_erf()?, 5)?)?;
        let pooled = norm(&h, 2)?.map_linear(|t| self.pool(t))?;
        lin(&pooled, 6)?.cross_entropy(&self.labels)
    }
}

/// An embedding matrix of 20 tokens and the encoder's padded batch of ids.
fn vocabulary(rng: &mut Rng) -> (Var, Tensor) {
    let matrix = Var::from_tensor(&normal(rng, &[20, D_MODEL], 1.0)).unwrap();
    let ids = Tensor::new(
        &[[1u32, 4, 7, 2, 9], [3, 3, 8, 0, 0], [5, 6, 0, 0, 0]],
        &Device::Cpu,
    )
    .unwrap();
    (matrix, ids)
}

fn embeddings(rng: &mut Rng) -> Tensor {
    normal(rng, &[3, 5, D_MODEL], 1.0)
}

#[test]
fn models_match_double_backward_and_finite_differences() {
    let mut rng = Rng::new(11);
    let mlp = Mlp::new(&mut rng);
    let x = normal(&mut rng, &[8, 12], 1.0);
    let encoder = Encoder::new(&mut rng);
    let e = embeddings(&mut rng);
    let cases: [(&str, Tensor, Target, &Loss<'_>, &JetLoss<'_>); 2] = [
        (
            "MLP",
            x.clone(),
            Target::input(&x).unwrap(),
            &|x| mlp.loss(x),
            &|x| mlp.jet(x),
        ),
        (
            "encoder",
            e.clone(),
            Target::embedding_output(&e, Some(&encoder.mask)).unwrap(),
            &|x| encoder.loss(x),
            &|x| encoder.jet(x),
        ),
    ];
    for (name, point, target, loss, jet) in cases {
        let v = ProbeKind::Rademacher.sample(&target, &mut rng).unwrap();
        // Double backward, through the library and by hand.
        let exact = value(
            &laplacian::curvature(&target, loss, &v, CurvatureMethod::DoubleBackward).unwrap(),
        );
        let by_jet = value(&laplacian::jet_curvature(&target, jet, &v).unwrap());
        let relative = (by_jet - exact).abs() / exact.abs();
        assert!(
            relative < 1e-12,
            "{name}: Taylor {by_jet} against double backward {exact} ({relative:e})"
        );
        close(
            taylor(jet, &point, &v, None),
            reference(loss, &point, &v, None),
            1e-12,
            name,
        );
        // The second difference converges to it at order 2.
        let steps = [0.08, 0.04, 0.02, 0.01];
        let errors: Vec<f64> = steps
            .iter()
            .map(|&h| {
                let fd = laplacian::curvature(
                    &target,
                    loss,
                    &v,
                    CurvatureMethod::FiniteDifference { h },
                )
                .unwrap();
                (value(&fd) - by_jet).abs()
            })
            .collect();
        let fit = fit_order(&steps, &errors).unwrap();
        assert!(
            (fit.slope - 2.0).abs() < 0.1 && fit.r_squared > 0.99,
            "{name}: finite differences approach Taylor mode at order {} (r^2 {}), errors {errors:?}",
            fit.slope,
            fit.r_squared
        );
    }
}

/// The Laplacian step by Taylor mode and by double backward from the same probes: the same
/// objective and the same gradient for every weight and for the embedding point's source.
#[test]
fn taylor_step_trains_like_double_backward() {
    let mut rng = Rng::new(21);
    let encoder = Encoder::new(&mut rng);
    let (matrix, ids) = vocabulary(&mut rng);
    let e = matrix
        .as_tensor()
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((3, 5, D_MODEL))
        .unwrap();
    let target = Target::embedding_output(&e, Some(&encoder.mask)).unwrap();
    let loss = |x: &Tensor| encoder.loss(x);
    let jet = |x: &Jet| encoder.jet(x);
    let batch = Batch::new(&target, &loss).with_jet(&jet);
    let step = |method: CurvatureMethod| {
        Laplacian::new(0.3)
            .unwrap()
            .with_probes(2)
            .unwrap()
            .with_method(method)
            .unwrap()
            .step(&batch, &mut Rng::new(5))
            .unwrap()
    };
    let (taylor, double) = (
        step(CurvatureMethod::Taylor),
        step(CurvatureMethod::DoubleBackward),
    );
    let relative = (value(&taylor.loss) - value(&double.loss)).abs() / value(&double.loss);
    assert!(relative < 1e-13, "objective {relative:e}");
    assert_eq!(value(&taylor.clean_loss), value(&double.clean_loss));
    let mut vars: Vec<&Var> = vec![&matrix];
    for (w, b) in encoder.norms.iter().chain(&encoder.linears) {
        vars.extend([w, b]);
    }
    for (i, var) in vars.iter().enumerate() {
        let (a, b) = (
            taylor.grads.get(var.as_tensor()).unwrap(),
            double.grads.get(var.as_tensor()).unwrap(),
        );
        let norm = |t: &Tensor| value(&t.sqr().unwrap().sum_all().unwrap()).sqrt();
        if i == 10 {
            // The key bias adds the same number to every score of a query, which the softmax
            // ignores: its gradient is zero, and both come out at rounding level.
            assert!(
                norm(a) < 1e-15 && norm(b) < 1e-15,
                "{} {}",
                norm(a),
                norm(b)
            );
            continue;
        }
        let error = relative_error(a, b).unwrap();
        assert!(error < 1e-12, "variable {i}: relative error {error:e}");
    }
    assert_eq!(taylor.passes.double_backward, 0);
    assert_eq!(taylor.passes.backward, 1);
}

#[test]
fn taylor_mode_says_what_it_needs() {
    let mut rng = Rng::new(1);
    let mlp = Mlp::new(&mut rng);
    let x = normal(&mut rng, &[8, 12], 1.0);
    let target = Target::input(&x).unwrap();
    let loss = |x: &Tensor| mlp.loss(x);
    let mut taylor = Laplacian::new(0.1)
        .unwrap()
        .with_method(CurvatureMethod::Taylor)
        .unwrap();
    // No jet form on the batch.
    let error = taylor
        .step(&Batch::new(&target, &loss), &mut rng)
        .unwrap_err();
    assert!(error.to_string().contains("with_jet"), "{error}");
    // The free functions that take the loss alone point to jet_curvature.
    let v = ProbeKind::Rademacher.sample(&target, &mut rng).unwrap();
    let error = laplacian::curvature(&target, &loss, &v, CurvatureMethod::Taylor).unwrap_err();
    assert!(error.to_string().contains("jet_curvature"), "{error}");
    let error = laplacian::hutchinson(
        &target,
        &loss,
        ProbeKind::Rademacher,
        CurvatureMethod::Taylor,
        1,
        &mut rng,
    )
    .unwrap_err();
    assert!(error.to_string().contains("jet_curvature"), "{error}");
    // A jet form that does not end in a scalar.
    let not_scalar = |x: &Jet| x.tanh();
    let error = laplacian::jet_curvature(&target, &not_scalar, &v).unwrap_err();
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    // A jet form that never reaches the point: g^T v is zero.
    let cut = |x: &Jet| {
        let detached = Jet::new(&x.primal().detach(), &x.first().zeros_like()?)
            .map_err(candle_core::Error::wrap)?;
        detached.map_linear(|t| t.sum_all())?.tanh()
    };
    let error = taylor
        .step(&Batch::new(&target, &loss).with_jet(&cut), &mut rng)
        .unwrap_err();
    assert!(matches!(error, Error::ZeroGradient { .. }), "{error}");
    // An in-place target runs the user's model, which carries no jet.
    let weight = Var::from_tensor(&normal(&mut rng, &[4, 3], 1.0)).unwrap();
    let in_place = Target::in_place(&weight).unwrap();
    let jet = |x: &Jet| x.map_linear(|t| t.sum_all());
    let error =
        laplacian::jet_curvature(&in_place, &jet, &weight.zeros_like().unwrap()).unwrap_err();
    assert!(error.to_string().contains("in-place"), "{error}");
    // The set-up check passes the model's own jet form and names the part a wrong one gets wrong.
    let jet = |x: &Jet| mlp.jet(x);
    let check = laplacian::check_jet(&target, &loss, &jet, &mut rng).unwrap();
    assert!(check.value < 1e-14 && check.slope < 1e-12, "{check:?}");
    assert!(check.curvature.unwrap() < 1e-12, "{check:?}");
    let without_last_gelu = |x: &Jet| {
        let (w, b) = &mlp.layers[0];
        let h = x.linear(w.as_tensor(), Some(b.as_tensor()))?.gelu_erf()?;
        let (w, b) = &mlp.layers[1];
        let h = h.linear(w.as_tensor(), Some(b.as_tensor()))?;
        let (w, b) = &mlp.layers[2];
        h.linear(w.as_tensor(), Some(b.as_tensor()))?
            .cross_entropy(&mlp.labels)
    };
    let error = laplacian::check_jet(&target, &loss, &without_last_gelu, &mut rng).unwrap_err();
    assert!(
        error.to_string().contains("jet_fn") && error.to_string().contains("value"),
        "{error}"
    );
    // Parts of another shape or dtype.
    let error = Jet::new(&x, &x.narrow(0, 0, 2).unwrap()).unwrap_err();
    assert!(error.to_string().contains("direction"), "{error}");
    let error = Jet::new(&x, &x.to_dtype(DType::F32).unwrap()).unwrap_err();
    assert!(error.to_string().contains("dtype"), "{error}");
}

/// The toy MLP's jet form ([`advtrain::toy::Mlp::loss_jet`]) for its smooth and piecewise-linear
/// activations, against double backward of its ordinary loss.
#[test]
fn toy_mlp_jet_matches_its_loss() {
    use advtrain::toy::{Activation, Mlp};
    let mut rng = Rng::new(4);
    let x = normal(&mut rng, &[8, 6], 1.0);
    let v = normal(&mut rng, &[8, 6], 1.0);
    let labels = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2, 3], &Device::Cpu).unwrap();
    for activation in [Activation::Tanh, Activation::Relu] {
        let model = Mlp::new(&[6, 16, 16, 4], activation, 3, DType::F64, &Device::Cpu).unwrap();
        close(
            taylor(&|x| model.loss_jet(x, &labels), &x, &v, None),
            reference(&|x| model.loss(x, &labels), &x, &v, None),
            1e-12,
            &format!("{activation:?}"),
        );
    }
}

/// The embedding-rows target: the jet form looks the ids up in a jet of the rows (a linear map),
/// and its curvature is double backward's.
#[test]
fn the_rows_target_takes_a_jet_of_the_looked_up_rows() {
    let mut rng = Rng::new(31);
    let encoder = Encoder::new(&mut rng);
    let (matrix, ids) = vocabulary(&mut rng);
    let (target, lookup) = Target::embedding_rows(&matrix, &ids).unwrap();
    let loss = |rows: &Tensor| encoder.loss(&lookup.embed(rows)?);
    let jet = |rows: &Jet| encoder.jet(&rows.map_linear(|t| lookup.embed(t))?);
    let v = ProbeKind::Rademacher.sample(&target, &mut rng).unwrap();
    let exact =
        value(&laplacian::curvature(&target, &loss, &v, CurvatureMethod::DoubleBackward).unwrap());
    let taylor = value(&laplacian::jet_curvature(&target, &jet, &v).unwrap());
    assert!(
        (taylor - exact).abs() / exact.abs() < 1e-12,
        "{taylor} {exact}"
    );
}

//! The embedding-matrix target against `Target::embedding_rows`: the same FGM and gradient-penalty
//! steps, with and without forming `W + delta`, a copy of the whole matrix, in every perturbed pass.
//!
//! Model: `advtrain::toy::EmbeddingClassifier` (one attention block) with a BERT-sized vocabulary of
//! 30,522 and width 256 (a 31 MB f32 matrix), batch 16 x 64 tokens, f32 on the CPU. The rows target
//! is built inside each step, as a training loop builds it for every batch. Medians over interleaved
//! rounds; run with `cargo bench --bench embedding_target [-- --rounds N]`.

use advtrain::toy::EmbeddingClassifier;
use advtrain::{Batch, Method};
use advtrain::{Fgm, GradientPenalty, Rng, Target};
use candle_core::{DType, Device, Tensor};
use std::hint::black_box;
use std::time::Instant;

const VOCAB: usize = 30_522;
const WIDTH: usize = 256;
const METHODS: [&str; 5] = ["plain", "fgm_matrix", "fgm_rows", "gp_matrix", "gp_rows"];

fn step(method: &str, model: &EmbeddingClassifier, ids: &Tensor, mask: &Tensor, y: &Tensor) {
    let matrix = model.embedding_matrix();
    let whole = |w: &Tensor| model.loss_from_embeddings(&model.embed_with(w, ids)?, mask, y);
    let grads = match method {
        "plain" => whole(matrix.as_tensor()).unwrap().backward().unwrap(),
        "fgm_matrix" | "gp_matrix" => {
            let target = Target::embedding_matrix(matrix).unwrap();
            match method {
                "fgm_matrix" => Fgm::new(0.5)
                    .unwrap()
                    .step(&Batch::new(&target, &whole), &mut Rng::new(0)),
                _ => GradientPenalty::new(0.5)
                    .unwrap()
                    .step(&Batch::new(&target, &whole), &mut Rng::new(0)),
            }
            .unwrap()
            .grads
        }
        _ => {
            let (target, lookup) = Target::embedding_rows(matrix, ids).unwrap();
            let rows = |r: &Tensor| model.loss_from_embeddings(&lookup.embed(r)?, mask, y);
            match method {
                "fgm_rows" => Fgm::new(0.5)
                    .unwrap()
                    .step(&Batch::new(&target, &rows), &mut Rng::new(0)),
                _ => GradientPenalty::new(0.5)
                    .unwrap()
                    .step(&Batch::new(&target, &rows), &mut Rng::new(0)),
            }
            .unwrap()
            .grads
        }
    };
    black_box(grads);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let device = Device::Cpu;
    let model = EmbeddingClassifier::new(VOCAB, WIDTH, 2, 1, DType::F32, &device).unwrap();
    let batch = model.batch(16, 64, 2, &mut Rng::new(2)).unwrap();
    let (ids, mask, y) = (&batch.ids, &batch.mask, &batch.labels);
    let mut times = vec![Vec::new(); METHODS.len()];
    for method in METHODS {
        step(method, &model, ids, mask, y);
    }
    for round in 0..rounds {
        for i in 0..METHODS.len() {
            let i = (i + round) % METHODS.len();
            let started = Instant::now();
            step(METHODS[i], &model, ids, mask, y);
            times[i].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    println!(
        "embedding {VOCAB} x {WIDTH} f32, batch 16 x 64 tokens: median ms per step over {rounds} rounds"
    );
    println!("| step | matrix target | rows target | rows / matrix |");
    println!("|---|---|---|---|");
    println!("| plain | {:.2} | - | - |", medians[0]);
    for (name, m, r) in [("FGM", 1, 2), ("gradient penalty", 3, 4)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            medians[m],
            medians[r],
            medians[r] / medians[m]
        );
    }
}

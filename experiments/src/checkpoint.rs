//! Checkpoints: the model's parameters, Adam's moment estimates and the epoch, in one safetensors
//! file, so an interrupted run resumes to the same result (the data order and every random draw of an
//! epoch are derived from the seed and the epoch number). candle-nn's AdamW keeps its moments private,
//! which is why the runner uses this small Adam whose state can be saved. Book: "Experiments".

use advtrain::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, backprop::GradStore};
use std::collections::HashMap;
use std::path::Path;

/// Adam (Kingma and Ba) with decoupled weight decay, over named variables.
pub struct Adam {
    vars: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: usize,
    lr: f64,
    weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    /// Adam over `vars` with learning rate `lr` and decoupled weight decay `weight_decay`.
    pub fn new(vars: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> Result<Self> {
        advtrain::error::check_positive("lr", lr)?;
        advtrain::error::check_non_negative("weight_decay", weight_decay)?;
        let zeros = |v: &Var| v.zeros_like();
        Ok(Self {
            first: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            second: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            vars,
            step: 0,
            lr,
            weight_decay,
        })
    }

    /// One update from `grads` (a variable without a gradient is left alone).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            self.first[i] = ((&self.first[i] * BETA1)? + (&g * (1.0 - BETA1))?)?;
            self.second[i] = ((&self.second[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&self.first[i] / c1)? / ((&self.second[i] / c2)?.sqrt()? + EPS)?)?;
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            var.set(&(decayed - (update * self.lr)?)?)?;
        }
        Ok(())
    }
}

/// Saves the variables, the optimiser's state and `epoch` to `path`.
pub fn save(path: &Path, adam: &Adam, epoch: usize) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, var)) in adam.vars.iter().enumerate() {
        tensors.insert(format!("param.{name}"), var.as_tensor().detach());
        tensors.insert(format!("adam_m.{name}"), adam.first[i].clone());
        tensors.insert(format!("adam_v.{name}"), adam.second[i].clone());
    }
    let meta = Tensor::new(&[epoch as u32, adam.step as u32], &Device::Cpu)?;
    tensors.insert("meta.epoch_step".into(), meta);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(path, e))?;
    }
    let partial = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &partial)?;
    std::fs::rename(&partial, path).map_err(|e| io_error(path, e))?;
    Ok(())
}

/// A file-system error on `path` as a data error (shared by the runner).
pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(
        path.display(),
        None,
        e.to_string(),
        "check the output folder is writable",
    )
}

/// Restores the variables and the optimiser's state from `path`; returns the epoch saved.
pub fn load(path: &Path, adam: &mut Adam) -> Result<usize> {
    let device = adam
        .vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = candle_core::safetensors::load(path, &device).map_err(|e| io_error(path, e))?;
    let get = |key: String| -> Result<&Tensor> {
        tensors.get(&key).ok_or_else(|| {
            Error::data(
                path.display(),
                None,
                format!("the checkpoint has no {key}"),
                "delete the checkpoint folder to start the run afresh",
            )
        })
    };
    for (i, (name, var)) in adam.vars.iter().enumerate() {
        var.set(&get(format!("param.{name}"))?.to_dtype(var.dtype())?)
            .map_err(|e| {
                Error::data(
                    path.display(),
                    None,
                    format!("param.{name} does not fit the model: {e}"),
                    "the checkpoint is from another model or data set: delete the checkpoint \
                     folder to start the run afresh",
                )
            })?;
        adam.first[i] = get(format!("adam_m.{name}"))?.to_dtype(var.dtype())?;
        adam.second[i] = get(format!("adam_v.{name}"))?.to_dtype(var.dtype())?;
    }
    let meta = get("meta.epoch_step".into())?
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let [epoch, step] = meta[..] else {
        return Err(Error::data(
            path.display(),
            None,
            format!("meta.epoch_step holds {} values, not 2", meta.len()),
            "delete the checkpoint folder to start the run afresh",
        ));
    };
    adam.step = step as usize;
    Ok(epoch as usize)
}

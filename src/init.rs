//! Seeded parameter initialisation behind candle-nn's own `VarBuilder`.
//!
//! candle-nn's `VarMap` draws initial weights from an unseeded thread RNG. [`SeededVarMap`] is a drop-in
//! backend for `VarBuilder` that honours the same `Init` hints (constant, normal, uniform, Kaiming) but
//! draws from the crate's [`Rng`]: build your model with `candle_nn::linear(.., vb)` as
//! usual and the same seed gives the same weights. Book: "Introduction", section "How a result is checked" (fixed seeds).

use crate::{Result, Rng};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::sync::{Arc, Mutex};

/// A `VarMap` whose new variables are drawn from a seeded [`Rng`].
#[derive(Clone)]
pub struct SeededVarMap {
    varmap: VarMap,
    rng: Arc<Mutex<Rng>>,
}

impl SeededVarMap {
    /// An empty map whose initial values are fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            rng: Arc::new(Mutex::new(Rng::new(seed))),
        }
    }

    /// A `VarBuilder` that creates (or reuses) variables in this map.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The underlying candle `VarMap` (for saving, loading, and optimisers).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// All variables, sorted by name so the order is reproducible.
    pub fn all_vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// All variables with their names, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    fn draw(&self, shape: &Shape, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut rng = self.rng.lock().expect("rng lock poisoned");
        match init {
            Init::Const(c) => Ok((Tensor::ones(shape, dtype, device)? * c)?),
            Init::Randn { mean, stdev } => Ok(rng
                .normal(shape, DType::F64, device)?
                .affine(stdev, mean)?
                .to_dtype(dtype)?),
            Init::Uniform { lo, up } => rng.uniform(lo, up, shape, dtype, device),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        rng.uniform(-bound, bound, shape, dtype, device)
                    }
                    NormalOrUniform::Normal => {
                        Ok((rng.normal(shape, DType::F64, device)? * std)?.to_dtype(dtype)?)
                    }
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(existing) = self.varmap.data().lock().unwrap().get(name) {
            let t = existing.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` exists with shape {:?}, requested {:?}",
                    t.shape(),
                    s
                );
            }
            return t.to_dtype(dtype);
        }
        let var = Var::from_tensor(&self.draw(&s, h, dtype, dev)?)?;
        let tensor = var.as_tensor().clone();
        self.varmap
            .data()
            .lock()
            .unwrap()
            .insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.varmap.data().lock().unwrap().get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no variable named `{name}` in the SeededVarMap"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().unwrap().contains_key(name)
    }
}

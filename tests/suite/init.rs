//! Seeded initialisation behind candle-nn's VarBuilder (src/init.rs).

use advtrain::init::SeededVarMap;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, Module};

fn weights(seed: u64) -> Vec<Vec<f32>> {
    let params = SeededVarMap::new(seed);
    let vb = params.var_builder(DType::F32, &Device::Cpu);
    let layer = candle_nn::linear(4, 3, vb.pp("layer")).unwrap();
    let _ = layer
        .forward(&Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    params
        .all_vars()
        .iter()
        .map(|v| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn same_seed_same_model() {
    assert_eq!(weights(5), weights(5));
    assert_ne!(weights(5), weights(6));
}

#[test]
fn init_hints_are_honoured() {
    let params = SeededVarMap::new(1);
    let vb = params.var_builder(DType::F64, &Device::Cpu);
    let c = vb.get_with_hints(10, "c", Init::Const(0.5)).unwrap();
    assert!(c.to_vec1::<f64>().unwrap().iter().all(|v| *v == 0.5));
    let k = vb
        .get_with_hints((8, 50), "k", candle_nn::init::DEFAULT_KAIMING_UNIFORM)
        .unwrap();
    let bound = 3f64.sqrt() * 2f64.sqrt() / 50f64.sqrt();
    let values: Vec<f64> = k.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().all(|v| v.abs() <= bound));
    assert!(values.iter().any(|v| v.abs() > 0.8 * bound));
    let u = vb
        .get_with_hints(1000, "u", Init::Uniform { lo: 1.0, up: 2.0 })
        .unwrap();
    assert!(
        u.to_vec1::<f64>()
            .unwrap()
            .iter()
            .all(|v| (1.0..2.0).contains(v))
    );
    // Asking again by name returns the same variable; another shape is an error.
    let again = vb.get_with_hints(10, "c", Init::Const(9.0)).unwrap();
    assert_eq!(again.to_vec1::<f64>().unwrap(), c.to_vec1::<f64>().unwrap());
    assert!(vb.get_with_hints(11, "c", Init::Const(0.0)).is_err());
    assert_eq!(params.all_vars().len(), 3);
}

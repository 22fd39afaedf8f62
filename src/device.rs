//! Device selection: the GPU when one is present (and the crate is built with CUDA), the CPU otherwise,
//! with a sentence saying which and why. Used by the binary, the examples and the notebooks.

use candle_core::Device;

/// The device to run on, and a description of the choice for the user.
pub fn select() -> (Device, String) {
    if candle_core::utils::cuda_is_available() {
        match Device::new_cuda(0) {
            Ok(device) => return (device, "GPU (CUDA device 0)".into()),
            Err(e) => {
                // candle appends a backtrace to driver errors: the first line says what happened.
                let e = e.to_string();
                let reason = e.lines().next().unwrap_or("unknown error");
                return (
                    Device::Cpu,
                    format!("CPU (built with CUDA, but no usable GPU: {reason})"),
                );
            }
        }
    }
    (
        Device::Cpu,
        "CPU (this build has no CUDA support; see the README's GPU section)".into(),
    )
}

//! Device selection (src/device.rs).

#[test]
fn selection_says_which_device_and_why() {
    let (device, description) = advtrain::device::select();
    if candle_core::utils::cuda_is_available() {
        assert!(description.contains("GPU") || description.contains("no usable GPU"));
    } else {
        assert!(device.is_cpu());
        assert!(
            description.starts_with("CPU") && description.contains("CUDA"),
            "{description}"
        );
    }
}

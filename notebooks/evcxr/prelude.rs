// Loaded by the evcxr kernel at start (EVCXR_CONFIG_DIR points here when notebooks/run.py runs them).
// A panic (a failed assert!) aborts the kernel, which the runner reports, instead of a line on stderr.
std::panic::set_hook(Box::new(|info| {
    eprintln!("panic: {info}");
    std::process::abort();
}));

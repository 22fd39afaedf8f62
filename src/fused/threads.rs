//! Threads: candle's elementwise ops on 64k elements or more run on its own pool of workers, which
//! spin for up to 25,000 rounds after each op before they sleep. Between ops the spinning workers
//! take cores from the matrix products' threads and from the thread that records the graph: on two
//! cores, an MLP's FGM step (256 x 512) took 10.7 to 11.9 ms at two threads, no faster than at one
//! (11.4 ms), and 7.5 to 10.0 ms (median 8.2) with the spinning off. [`no_idle_spinning`] turns it off for the process. Book: "Fused
//! operations and speed", section "More than one core".

/// The environment variable candle reads, once, when it starts its elementwise pool.
pub const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` for this process unless it is set already, so candle's
/// elementwise workers sleep as soon as an op ends instead of spinning. Call it first thing in
/// `main` (or a notebook's first cell), beside [`crate::second_order::enable_for_new_threads`]:
/// candle reads the variable once, at the first elementwise op large enough to use its pool.
///
/// # Safety
/// It calls `std::env::set_var`: no other thread may read or write the environment at the same time.
/// At the start of `main`, before any thread is spawned, that holds.
pub unsafe fn no_idle_spinning() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        unsafe { std::env::set_var(SPIN_LIMIT_VAR, "0") };
    }
}

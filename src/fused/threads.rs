//! Threads: where a step's parallel work runs, and how candle's own workers wait.
//!
//! * [`in_worker_pool`]: the matrix products and the fused kernels split their work over rayon's
//!   pool. Called from a thread outside the pool (a program's main thread), every such op hands its
//!   work to the pool and puts the caller to sleep until a worker has finished; the workers, asleep
//!   between ops, must be woken first. A step of the MLP benchmark (256 x 512) runs some 20 such
//!   ops, and on two cores spent 0.23 s of 1.25 s of CPU in the kernel, with 94 context switches a
//!   step. Run from a worker of the pool, an op pushes its second half for the other worker to take
//!   and does the first itself, and takes back what nobody took. [`in_worker_pool`] runs a closure
//!   (a step, a training loop, a whole program) on such a worker.
//! * [`no_idle_spinning`]: candle's elementwise ops on 64k elements or more run on its own pool of
//!   workers, which spin for up to 25,000 rounds after each op before they sleep, taking cores from
//!   the matrix products' threads: on two cores, an MLP's FGM step took 10.7 to 11.9 ms at two
//!   threads, no faster than at one (11.4 ms), and 7.5 to 10.0 ms (median 8.2) with the spinning
//!   off.
//!
//! Book: "Fused operations and speed", section "More than one core".

use std::cell::{Cell, OnceCell};

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

/// Each worker's stack. candle's backward pass walks the graph recursively, one frame per node on
/// the longest path, and a double backward's graph is long: rayon's default of 2 MiB is too little
/// for deep models (about 9,000 nodes deep), and the main thread has 8 MiB. Only the pages a walk
/// touches are committed.
pub const WORKER_STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a worker of advtrain's thread pool and returns its result: the way to give a
/// training step (or a loop of them) every core. Inside, the matrix products and the fused kernels
/// split their work over the pool's workers without waking a sleeping caller per op. The pool has
/// candle's thread count (`RAYON_NUM_THREADS`, else one per physical core) and stacks of
/// [`WORKER_STACK_BYTES`]; it starts on the first call. Each calling thread gets a pool of its own,
/// so two threads that call this at once never run each other's work: a worker waiting inside an
/// op could otherwise pick up the other caller's closure and run it with this thread's backward
/// settings ([`super::backward_for`], [`super::backward_first_order`]). Called from one of these
/// workers, `f` runs in place; called from a worker of another rayon pool, it still moves to this
/// one. Results are the same bit for bit in and out of the pool: the ops split their work the same
/// way at a given thread count.
///
/// ```
/// use advtrain::{fused, Batch, Fgm, Method, Rng, Target};
/// use candle_core::{Device, Tensor};
///
/// let x = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu)?;
/// let loss = |x: &Tensor| x.sqr()?.sum_all();
/// let target = Target::input(&x)?;
/// let step = fused::in_worker_pool(|| Fgm::new(0.1)?.step(&Batch::new(&target, &loss), &mut Rng::new(0)))?;
/// assert!(step.loss.to_scalar::<f64>()? > 5.0);
/// # Ok::<(), advtrain::Error>(())
/// ```
pub fn in_worker_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if IS_WORKER.with(Cell::get) {
        return f();
    }
    POOL.with(|pool| match pool.get_or_init(build_pool) {
        Some(pool) => pool.install(f),
        // The system refused the threads: run on the caller, as without the pool.
        None => f(),
    })
}

thread_local! {
    /// Whether this thread is one of the pools' workers.
    static IS_WORKER: Cell<bool> = const { Cell::new(false) };
    /// The calling thread's own pool.
    static POOL: OnceCell<Option<rayon::ThreadPool>> = const { OnceCell::new() };
}

fn build_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(candle_core::utils::get_num_threads())
        .stack_size(WORKER_STACK_BYTES)
        .thread_name(|i| format!("advtrain-worker-{i}"))
        .start_handler(|_| IS_WORKER.with(|w| w.set(true)))
        .build()
        .ok()
}

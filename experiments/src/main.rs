//! `advtrain`: the command line. `cargo run --release` (or `advtrain verify`) verifies every
//! equivalence of the book on small models and prints a table; `advtrain experiment <name>` trains
//! every method over seeds on real data. `advtrain --help` lists the commands and their options.

use advtrain_experiments::cli::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    // SAFETY: set before any other thread exists and before any backward pass, so every thread that
    // candle starts reads the same value (second-order gradients on).
    unsafe { advtrain::second_order::enable_for_new_threads() };
    // SAFETY: as above. candle's elementwise workers sleep between ops instead of spinning (book,
    // "Fused operations and speed", "More than one core").
    unsafe { advtrain::fused::no_idle_spinning() };
    // An unknown command or flag: clap prints the usage and exits with status 2.
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Verify { markdown: false }) {
        Command::Verify { markdown } => verify(markdown),
        Command::Summarise { dir } => {
            print_summary(advtrain_experiments::report::rewrite_summary(&dir))
        }
        Command::Experiment(args) => {
            // The whole run on a worker of advtrain's pool: the matrix products and fused kernels
            // split over the cores without waking the caller per op (book, "More than one core").
            print_summary(advtrain::fused::in_worker_pool(|| {
                advtrain_experiments::cli::options(*args)
                    .and_then(|options| advtrain_experiments::cli::run(&options))
            }))
        }
    }
}

/// Prints a command's summary table, or its error on stderr with a failing status.
fn print_summary(outcome: advtrain::Result<String>) -> ExitCode {
    match outcome {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify(markdown: bool) -> ExitCode {
    let started = Instant::now();
    println!("advtrain: verifying every equivalence (f64, CPU, fixed seeds)\n");
    match advtrain::equivalence::all() {
        Ok(checks) => {
            if markdown {
                print!("{}", advtrain::equivalence::markdown_table(&checks));
            } else {
                print!("{}", advtrain::equivalence::table(&checks));
            }
            let failed = checks.iter().filter(|c| !c.pass).count();
            println!(
                "\n{} of {} checks pass ({:.1} s)",
                checks.len() - failed,
                checks.len(),
                started.elapsed().as_secs_f64()
            );
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `cargo run --release`: verify every equivalence of the book on small models and print a table
//! (`-- --markdown` prints it as Markdown). Exits with status 1 if any check fails.
//!
//! `cargo run --release -- experiment <thucnews|mnist> [--methods a,b,..] [--seeds N] [--epochs N]
//! [--quick] [--out DIR] [--data DIR]`: train every method over seeds and write the results table,
//! summary and figures (see the book's "Experiments" chapter).

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    // SAFETY: set before any other thread exists and before any backward pass, so every thread that
    // candle starts reads the same value (second-order gradients on).
    unsafe { advtrain::second_order::enable_for_new_threads() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("experiment") {
        return experiment(&args[1..]);
    }
    let started = Instant::now();
    println!("advtrain: verifying every equivalence (f64, CPU, fixed seeds)\n");
    match advtrain::equivalence::all() {
        Ok(checks) => {
            let markdown = args.iter().any(|a| a == "--markdown");
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

#[cfg(feature = "experiments")]
fn experiment(args: &[String]) -> ExitCode {
    match advtrain::experiments::cli::run(args) {
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

#[cfg(not(feature = "experiments"))]
fn experiment(_args: &[String]) -> ExitCode {
    eprintln!("error: built without the `experiments` feature; rebuild with default features");
    ExitCode::FAILURE
}

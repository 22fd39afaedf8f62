//! `cargo run --release`: verify every equivalence of the book on small models and print a table
//! (`-- --markdown` prints it as Markdown). Exits with status 1 if any check fails.

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    // SAFETY: set before any other thread exists and before any backward pass, so every thread that
    // candle starts reads the same value (second-order gradients on).
    unsafe { advtrain::second_order::enable_for_new_threads() };
    let started = Instant::now();
    println!("advtrain: verifying every equivalence (f64, CPU, fixed seeds)\n");
    match advtrain::equivalence::all() {
        Ok(checks) => {
            let markdown = std::env::args().any(|a| a == "--markdown");
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

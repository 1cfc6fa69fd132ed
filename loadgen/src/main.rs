//! `holdfast-loadgen`: see the library's documentation for what it measures.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use holdfast_loadgen::cli::Cli;
use holdfast_loadgen::stats::table_header;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("holdfast-loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    if cli.ping {
        let stats = holdfast_loadgen::run_ping(cli.duration, cli.cpu)?;
        if cli.json {
            writeln!(stdout, "{}", serde_json::json!({ "ping": stats.to_json() }))?;
        } else {
            let mut table = table_header();
            stats.write_rows(&mut table);
            write!(stdout, "{table}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = cli.config().map_err(anyhow::Error::msg)?;
    let report =
        holdfast_loadgen::run(&config).with_context(|| format!("against {}", config.addr))?;
    if cli.json {
        writeln!(stdout, "{}", report.to_json())?;
    } else {
        write!(stdout, "{}", report.to_table())?;
    }
    // Measurements are printed either way; a run in which nothing
    // succeeded is a failure for scripts.
    let succeeded = report.run.total_count() - report.run.total_errors();
    Ok(if succeeded == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

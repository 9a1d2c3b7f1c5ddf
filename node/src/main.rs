//! The `dcdn` binary: parses arguments, loads config, runs a subcommand, maps
//! errors to exit codes. Everything else lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use dcdn_node::bench;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "dcdn",
    version,
    about = "DCDN node: origin, relay and edge roles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with node configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure this host: each figure next to the raw library doing the same work.
    Bench {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Shorter runs (noisier figures); for smoke tests.
        #[arg(long)]
        quick: bool,
        /// Only run benchmarks whose name contains this.
        filter: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file (TOML or YAML) and print the effective config.
    Check {
        /// The file to check; `DCDN_*` environment variables are applied on top.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Bench {
            json,
            quick,
            filter,
        } => {
            let mut options = bench::BenchOptions::default();
            if quick {
                options.duration = std::time::Duration::from_millis(200);
            }
            let results = bench::run_all(options, |name| {
                filter.as_deref().is_none_or(|f| name.contains(f))
            });
            if json {
                for r in &results {
                    println!("{}", serde_json::to_string(r).context("encoding result")?);
                }
            } else {
                println!(
                    "{:<16} {:>14} {:>14} {:>7}  {:<10} baseline",
                    "bench", "ours", "baseline", "ratio", "unit"
                );
                for r in &results {
                    println!(
                        "{:<16} {:>14.1} {:>14.1} {:>7.2}  {:<10} {}",
                        r.bench, r.ours, r.baseline, r.ratio, r.unit, r.baseline_name
                    );
                }
            }
            Ok(())
        }
    }
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let config = dcdn_node::config::NodeConfig::from_file(file, std::env::vars())?;
    println!(
        "# {}: valid (config hash {})",
        file.display(),
        config.config_hash()
    );
    print!("{}", config.to_toml());
    Ok(())
}

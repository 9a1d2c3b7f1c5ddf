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
    /// Run a node (origin, relay or edge, as its config says).
    Run {
        /// The node's config file (TOML or YAML).
        #[arg(long, short, env = "DCDN_CONFIG")]
        config: PathBuf,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
    /// Run a whole DCDN on this machine: origin, relays and edges as local processes.
    Up {
        /// Number of relays.
        #[arg(long, default_value_t = 1)]
        relays: usize,
        /// Number of edges.
        #[arg(long, default_value_t = 3)]
        edges: usize,
        /// Where to put configs, keys and logs (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Publish a sample object and live stream, fetch both through every
        /// edge, compare, and exit 0 only if every byte arrived verified.
        #[arg(long)]
        check: bool,
    },
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
        Command::Run { config, log_json } => {
            init_logs(log_json);
            runtime()?.block_on(run_node(&config))
        }
        Command::Up {
            relays,
            edges,
            dir,
            check,
        } => {
            init_logs(false);
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("dcdn-up-{}", std::process::id()))
            });
            let opts = dcdn_node::up::UpOptions {
                counts: dcdn_node::up::plan::Counts { relays, edges },
                dir,
                check,
                program: std::env::current_exe().context("locating the dcdn binary")?,
            };
            if runtime()?.block_on(dcdn_node::up::run(opts))? {
                Ok(())
            } else {
                anyhow::bail!("the local DCDN did not pass")
            }
        }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DCDN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn run_node(path: &std::path::Path) -> anyhow::Result<()> {
    use dcdn_node::roles::{run, settings::NodeSettings};
    let config = dcdn_node::config::NodeConfig::from_file(path, std::env::vars())?;
    let creds = run::load_credentials(&config, std::env::var("DCDN_INGEST_TOKEN").ok())?;
    let bundle_path = config.crypto.trust_bundle.clone();
    let mut settings = NodeSettings::from_config(config);
    settings.config_path = Some(path.to_owned());
    let node = run::start(settings, creds).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match node.shared.reload_trust_bundle(&bundle_path) {
                Ok(changed) => tracing::info!(changed, "trust bundle reloaded"),
                Err(e) => tracing::error!(error = %e, "trust bundle reload failed"),
            },
        }
    }
    tracing::info!("draining");
    node.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(())
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

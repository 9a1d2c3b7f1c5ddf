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
    /// Check a running DCDN end to end: publish an object and a live stream
    /// at the origin, fetch both through every edge, compare bytes and
    /// digests. Exits 0 only if every byte arrived verified.
    Check {
        /// Origin ingest base URL, e.g. http://10.0.0.10:8080.
        #[arg(long)]
        origin: String,
        /// Ingest bearer token.
        #[arg(long, env = "DCDN_INGEST_TOKEN", hide_env_values = true)]
        token: String,
        /// Edge client base URL (repeatable).
        #[arg(long = "edge", required = true)]
        edges: Vec<String>,
        /// The origin's admin base URL: also measure origin offload.
        #[arg(long)]
        origin_admin: Option<String>,
        /// Object size in bytes (0: no object).
        #[arg(long, default_value_t = 8 * 1024 * 1024 + 12_345)]
        object_bytes: usize,
        /// Live pieces to publish (0: no live stream).
        #[arg(long, default_value_t = 40)]
        live_pieces: usize,
        /// Bytes per live piece.
        #[arg(long, default_value_t = 16 * 1024)]
        live_piece_bytes: usize,
        /// Milliseconds between live pieces.
        #[arg(long, default_value_t = 20)]
        live_interval_ms: u64,
    },
    /// Generate a cluster CA, a signing key with its trust bundle, and node certificates.
    Keygen {
        /// Directory to write into (created if missing; existing CA and key are reused).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Cluster name recorded in the CA certificate.
        #[arg(long, default_value = "dcdn")]
        cluster: String,
        /// Issue a certificate for this node name (repeatable), as NAME:ROLE.
        #[arg(long = "node", value_name = "NAME:ROLE")]
        nodes: Vec<String>,
    },
    /// Publish a file (or `-` for standard input) to an origin.
    Publish {
        /// The file to publish, or `-` for standard input.
        file: PathBuf,
        /// Origin ingest base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        origin: String,
        /// Object name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Ingest bearer token.
        #[arg(long, env = "DCDN_INGEST_TOKEN", hide_env_values = true)]
        token: String,
        /// Publish as a live stream (chunks pushed as they are read) instead of an object.
        #[arg(long)]
        live: bool,
    },
    /// Fetch an object from an edge to a file.
    Fetch {
        /// Object URL, e.g. http://edge:8080/v1/objects/NAME.
        url: String,
        /// Output file; replaced only once the whole body arrived and verified.
        #[arg(short, long)]
        output: PathBuf,
        /// Seconds to wait for the response's headers.
        #[arg(long, default_value_t = 30)]
        response_timeout_secs: u64,
        /// Seconds without a byte of the body before giving up.
        #[arg(long, default_value_t = 30)]
        idle_timeout_secs: u64,
    },
    /// Talk to a node's admin API.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        /// Admin base URL, e.g. http://127.0.0.1:9090.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9090")]
        node: String,
        /// Bearer token (read scope is enough except for reload).
        #[arg(long, global = true, env = "DCDN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Work with node configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Simulate a cluster of thousands of nodes in virtual time with the
    /// node's own protocol code: completion times, origin offload, FEC, bans.
    Sim {
        /// Scenario file (TOML or YAML); flags override it. Without one, the
        /// defaults (1 relay, 6 edges, a 64 MiB object) are run.
        scenario: Option<PathBuf>,
        #[command(flatten)]
        overrides: dcdn_node::sim::scenario::Overrides,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also draw the completion-time CDF per tier as an SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
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
enum AdminCommand {
    /// Role, version, uptime, config hash, key generation, counts.
    Status,
    /// Connected peers with traffic, choke state and reputation.
    Peers,
    /// Keys, their states and the generation.
    Keys,
    /// Re-read the config file; prints what was applied and what needs a restart.
    Reload,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file (TOML or YAML) and print the effective config.
    Check {
        /// The file to check; `DCDN_*` environment variables are applied on top.
        file: PathBuf,
    },
}

fn sim(
    scenario: Option<&std::path::Path>,
    overrides: &dcdn_node::sim::scenario::Overrides,
    json: bool,
    svg: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use dcdn_node::sim::{self, scenario::Scenario};
    let mut s = match scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::default(),
    };
    overrides.apply(&mut s);
    let report = sim::run(&s).map_err(anyhow::Error::msg)?;
    if let Some(path) = svg {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
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
        Command::Check {
            origin,
            token,
            edges,
            origin_admin,
            object_bytes,
            live_pieces,
            live_piece_bytes,
            live_interval_ms,
        } => {
            use dcdn_node::up::check;
            let targets = check::Targets {
                origin,
                ingest_token: token,
                edges,
                origin_admin,
            };
            let sizes = check::CheckSizes {
                object_bytes,
                live_pieces,
                live_piece_bytes,
                live_interval: std::time::Duration::from_millis(live_interval_ms),
            };
            let outcomes = runtime()?.block_on(check::run(&targets, sizes));
            if check::report(&outcomes) {
                Ok(())
            } else {
                anyhow::bail!("the check failed")
            }
        }
        Command::Keygen {
            out,
            cluster,
            nodes,
        } => keygen(&out, &cluster, &nodes),
        Command::Publish {
            file,
            origin,
            name,
            token,
            live,
        } => runtime()?.block_on(publish(&file, &origin, name, &token, live)),
        Command::Fetch {
            url,
            output,
            response_timeout_secs,
            idle_timeout_secs,
        } => runtime()?.block_on(fetch(
            &url,
            &output,
            dcdn_node::client::FetchTimeouts {
                response: std::time::Duration::from_secs(response_timeout_secs.max(1)),
                idle: std::time::Duration::from_secs(idle_timeout_secs.max(1)),
            },
        )),
        Command::Admin {
            command,
            node,
            token,
        } => runtime()?.block_on(admin(command, &node, token.as_deref())),
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
        Command::Sim {
            scenario,
            overrides,
            json,
            svg,
        } => sim(scenario.as_deref(), &overrides, json, svg.as_deref()),
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

fn keygen(out: &std::path::Path, cluster: &str, nodes: &[String]) -> anyhow::Result<()> {
    use dcdn_node::crypto::{KeyRing, Signer};
    use dcdn_node::transport::ClusterCa;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (ca_cert, ca_key) = (out.join("ca.pem"), out.join("ca.key"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        ClusterCa::load(&ca_cert, &ca_key)?
    } else {
        let ca = ClusterCa::generate(cluster)?;
        write_file(&ca_cert, ca.cert_pem(), false)?;
        write_file(&ca_key, ca.key_pem(), true)?;
        println!("wrote {} and {}", ca_cert.display(), ca_key.display());
        ca
    };
    let key_path = out.join("signing.key");
    if !key_path.exists() {
        let signer = Signer::generate(&mut rand::rngs::OsRng);
        signer.save(&key_path)?;
        let mut ring = KeyRing::new();
        let id = ring.add_trusted(signer.public_key())?;
        ring.activate(id)?;
        write_file(
            &out.join("trust-bundle.json"),
            &ring.to_bundle().to_json(),
            false,
        )?;
        println!(
            "wrote {} (key {id}) and trust-bundle.json",
            key_path.display()
        );
    }
    for spec in nodes {
        let (name, role) = spec
            .split_once(':')
            .with_context(|| format!("--node {spec:?}: expected NAME:ROLE"))?;
        let role: dcdn_node::config::Role = serde_json::from_value(serde_json::json!(role))
            .with_context(|| format!("--node {spec:?}: role must be origin, relay or edge"))?;
        let id = ca.issue_node(name, role)?;
        write_file(&out.join(format!("{name}.pem")), &id.cert_pem, false)?;
        write_file(&out.join(format!("{name}.key")), &id.key_pem, true)?;
        println!("wrote {name}.pem and {name}.key ({role})");
    }
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

async fn publish(
    file: &std::path::Path,
    origin: &str,
    name: Option<String>,
    token: &str,
    live: bool,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let stdin = file.as_os_str() == "-";
    let name = match name {
        Some(n) => n,
        None if stdin => anyhow::bail!("publishing standard input needs --name"),
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .context("the file has no usable name; pass --name")?,
    };
    let total = if stdin {
        None
    } else {
        std::fs::metadata(file).ok().map(|m| m.len())
    };
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if stdin {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?,
        )
    };
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                let n = sent.load(std::sync::atomic::Ordering::Relaxed);
                match total {
                    Some(t) if t > 0 => eprint!(
                        "\r{:>6.1}% {:>12} / {} bytes",
                        n as f64 * 100.0 / t as f64,
                        n,
                        t
                    ),
                    _ => eprint!("\r{n:>12} bytes"),
                }
            }
        })
    };
    let body = futures_util::stream::unfold((reader, sent), |(mut r, sent)| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                Some((Ok(bytes::Bytes::from(buf)), (r, sent)))
            }
            Err(e) => Some((Err(e), (r, sent))),
        }
    });
    let kind = if live { "streams" } else { "objects" };
    let url = format!("{}/v1/{kind}/{name}", origin.trim_end_matches('/'));
    let client = dcdn_node::client::Client::new(std::time::Duration::from_secs(3600));
    let result = client.put_stream(&url, Some(token), body).await;
    progress.abort();
    eprintln!();
    let resp = result?;
    println!("{}", String::from_utf8_lossy(&resp.body));
    Ok(())
}

async fn fetch(
    url: &str,
    output: &std::path::Path,
    timeouts: dcdn_node::client::FetchTimeouts,
) -> anyhow::Result<()> {
    let done = dcdn_node::client::Client::fetch_to_file(url, output, timeouts).await?;
    println!(
        "{} bytes to {} (blake3 {})",
        done.bytes,
        output.display(),
        done.digest
    );
    Ok(())
}

async fn admin(command: AdminCommand, node: &str, token: Option<&str>) -> anyhow::Result<()> {
    let client = dcdn_node::client::Client::new(std::time::Duration::from_secs(10));
    let base = node.trim_end_matches('/');
    let value = match command {
        AdminCommand::Status => client.get_json(&format!("{base}/v1/status"), token).await?,
        AdminCommand::Peers => client.get_json(&format!("{base}/v1/peers"), token).await?,
        AdminCommand::Keys => client.get_json(&format!("{base}/v1/keys"), token).await?,
        AdminCommand::Reload => {
            let resp = client
                .send(
                    hyper::Method::POST,
                    &format!("{base}/v1/config/reload"),
                    token,
                    &[],
                    axum::body::Body::empty(),
                )
                .await?;
            serde_json::from_slice(&resp.body).context("the reply is not JSON")?
        }
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
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
    config
        .validate_runnable()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!(
        "# {}: valid (config hash {})",
        file.display(),
        config.config_hash()
    );
    print!("{}", config.to_toml());
    Ok(())
}

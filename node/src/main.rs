//! The `dcdn` binary: parses arguments, loads config, runs a subcommand, maps
//! errors to exit codes. Everything else lives in the library.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use dcdn_node::bench;
use dcdn_node::cli::Failure;
use std::path::PathBuf;
use std::process::ExitCode;

/// `print!` that returns an error instead of panicking when standard output
/// is gone (`dcdn completion bash | head`); `main` exits quietly on it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).context("writing to standard output")
    }};
}

/// `println!`, see [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).context("writing to standard output")
    }};
}

#[derive(Debug, Parser)]
#[command(
    name = "dcdn",
    version = dcdn_node::VERSION,
    about = "DCDN node: origin, relay and edge roles",
    after_help = dcdn_node::cli::exit_codes_help()
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
        #[command(flatten)]
        log: dcdn_node::logging::LogArgs,
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
        /// Print the nodes' URLs (and the check's outcome) as JSON.
        #[arg(long)]
        json: bool,
        /// Serve clients and publishers over HTTPS (HTTP/2, HTTP/1.1) and
        /// HTTP/3 with certificates from a throwaway CA; prints the CA file
        /// to trust (`--cacert`).
        #[arg(long)]
        tls: bool,
    },
    /// Check a running DCDN end to end: publish an object and a live stream
    /// at the origin, fetch both through every edge, compare bytes and
    /// digests. Exits 0 only if every byte arrived verified.
    Check {
        /// Origin ingest base URL, e.g. http://10.0.0.10:8080.
        #[arg(long, env = "DCDN_ORIGIN")]
        origin: String,
        /// Ingest bearer token.
        #[arg(long, env = "DCDN_INGEST_TOKEN", hide_env_values = true)]
        token: String,
        /// Edge client base URL (repeatable; the variable takes a comma-separated list).
        #[arg(
            long = "edge",
            env = "DCDN_EDGE",
            value_delimiter = ',',
            required = true
        )]
        edges: Vec<String>,
        /// The origin's admin base URL: also measure origin offload.
        #[arg(long, env = "DCDN_ADMIN_URL")]
        origin_admin: Option<String>,
        /// A CA certificate file (PEM) to trust beside the system's roots,
        /// for https:// URLs (what `dcdn up --tls` prints).
        #[arg(long, env = "DCDN_CACERT", value_name = "FILE")]
        cacert: Option<PathBuf>,
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
        /// Print the outcome of every step and the figures as JSON.
        #[arg(long)]
        json: bool,
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
        #[arg(long, env = "DCDN_ORIGIN")]
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
        /// A CA certificate file (PEM) to trust beside the system's roots,
        /// for https:// URLs (what `dcdn up --tls` prints).
        #[arg(long, env = "DCDN_CACERT", value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Then have every edge pull the object now, before clients ask
        /// (`POST /v1/objects/NAME/preheat`); progress in `dcdn status`.
        #[arg(long, conflicts_with = "live")]
        preheat: bool,
        /// Send a file again this many times when the origin cannot be
        /// reached or answers 502, 503 or 504 (an origin restarting), waiting
        /// 0.5 s, then twice as long each time (at most 8 s). Standard input
        /// and --live are sent once.
        #[arg(long, default_value_t = 4, value_name = "N")]
        retries: u32,
        /// Print what was published as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Purge every published version of an object from every node.
    Purge {
        /// Object name.
        name: String,
        /// Origin ingest base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        origin: String,
        /// Ingest bearer token.
        #[arg(long, env = "DCDN_INGEST_TOKEN", hide_env_values = true)]
        token: String,
        /// A CA certificate file (PEM) to trust beside the system's roots,
        /// for https:// URLs (what `dcdn up --tls` prints).
        #[arg(long, env = "DCDN_CACERT", value_name = "FILE")]
        cacert: Option<PathBuf>,
    },
    /// Fetch an object from an edge, verify it against its ETag, write it.
    ///
    /// The bytes go to FILE.part, renamed to FILE once verified.
    Fetch {
        /// Object URL (http://edge:8080/v1/objects/NAME), or an object NAME
        /// looked up at --edge.
        url: String,
        /// Output file (replaced only once the whole body arrived and
        /// verified), or `-` for standard output.
        #[arg(short, long)]
        output: PathBuf,
        /// Edge client base URL, used when the argument is a NAME.
        #[arg(long, env = "DCDN_EDGE")]
        edge: Option<String>,
        /// Keep FILE.part when interrupted, and resume from it (HTTP Range).
        #[arg(short = 'c', long = "continue")]
        resume: bool,
        /// Seconds to wait for the response's headers.
        #[arg(long, default_value_t = 30)]
        response_timeout_secs: u64,
        /// Seconds without a byte of the body before giving up.
        #[arg(long, default_value_t = 30)]
        idle_timeout_secs: u64,
        /// Fetch over HTTP/3 (QUIC, UDP at the URL's port) instead of
        /// HTTP/2 or HTTP/1.1; https:// URLs only.
        #[arg(long)]
        http3: bool,
        /// A CA certificate file (PEM) to trust beside the system's roots,
        /// for https:// URLs (what `dcdn up --tls` prints).
        #[arg(long, env = "DCDN_CACERT", value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Print what was fetched as JSON (to stderr when the object goes to stdout).
        #[arg(long)]
        json: bool,
    },
    /// Talk to a node's admin API.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        /// Admin base URL, e.g. http://127.0.0.1:9090.
        #[arg(
            long,
            global = true,
            env = "DCDN_ADMIN_URL",
            default_value = "http://127.0.0.1:9090"
        )]
        node: String,
        /// Bearer token (read scope is enough except for reload and key changes).
        #[arg(long, global = true, env = "DCDN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Show a whole cluster at once: every node's role, peers, store fill,
    /// active key and the origin's offload, from the nodes' admin URLs.
    Status {
        /// Admin base URLs (repeatable; the variable takes a comma-separated list).
        #[arg(
            long = "admin",
            env = "DCDN_ADMIN_URL",
            value_delimiter = ',',
            required = true
        )]
        admins: Vec<String>,
        /// Bearer token with read scope.
        #[arg(long, env = "DCDN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// e.g. `dcdn completion bash > /etc/bash_completion.d/dcdn`.
    Completion { shell: clap_complete::Shell },
    /// Write man pages (dcdn.1, dcdn-fetch.1, ...) into a directory.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Work with node configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Simulate a cluster of thousands of nodes in virtual time with the
    /// node's own protocol code: completion times, origin offload, FEC, bans.
    #[cfg(feature = "sim")]
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
    /// Store fill, budget, hits, misses, evictions.
    Store,
    /// The node's effective config and its hash.
    Config,
    /// Keys, their states and the generation; with a subcommand, change them.
    Keys {
        #[command(subcommand)]
        command: Option<KeysCommand>,
    },
    /// Re-read the config file; prints what was applied and what needs a restart.
    Reload,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Trust a public key (64 hex digits): the first step of a rotation.
    Add { public_key: String },
    /// Sign with a trusted key (origin) or accept it as the active one.
    Activate { id: String },
    /// Stop trusting a key; chunks signed with it are refused.
    Revoke { id: String },
}

impl AdminCommand {
    fn call(self) -> dcdn_node::cli::admin::Call {
        use dcdn_node::cli::admin::Call;
        match self {
            Self::Status => Call::Status,
            Self::Peers => Call::Peers,
            Self::Store => Call::Store,
            Self::Config => Call::Config,
            Self::Keys { command: None } => Call::Keys,
            Self::Keys {
                command: Some(KeysCommand::Add { public_key }),
            } => Call::KeyAdd { public_key },
            Self::Keys {
                command: Some(KeysCommand::Activate { id }),
            } => Call::KeyActivate { id },
            Self::Keys {
                command: Some(KeysCommand::Revoke { id }),
            } => Call::KeyRevoke { id },
            Self::Reload => Call::Reload,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file (TOML or YAML) and print the effective config.
    Check {
        /// The file to check; `DCDN_*` environment variables are applied on top.
        file: PathBuf,
        /// Print `{file, valid, config_hash, config}` or `{file, valid, error}` as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "sim")]
fn sim(
    scenario: Option<&std::path::Path>,
    overrides: &dcdn_node::sim::scenario::Overrides,
    json: bool,
    svg: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use dcdn_node::sim::{self, scenario::Scenario};
    huge_pages_for_sim();
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
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", report.table())?;
    }
    Ok(())
}

/// A large run reads small records at random across hundreds of megabytes
/// (pickers, chokers, queues of ten thousand edges): with 4 KiB pages
/// nearly every such read also misses the TLB, and at 10,000 edges that
/// was most of why a run cost more than ten times one of 1,000. glibc backs
/// its heap with transparent huge pages only when told so at start-up (the
/// `glibc.malloc.hugetlb` tunable; the kernel's default policy is
/// `madvise`), so `dcdn sim` starts itself once more with it set. The
/// variable being set is what stops a second restart; if the restart
/// fails, the run goes on with small pages, only slower.
#[cfg(feature = "sim")]
fn huge_pages_for_sim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TUNABLE: &str = "glibc.malloc.hugetlb";
        let old = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if old.contains(TUNABLE) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let tunables = if old.is_empty() {
            format!("{TUNABLE}=1")
        } else {
            format!("{old}:{TUNABLE}=1")
        };
        // Only returns on failure.
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", tunables)
            .exec();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`| head`) is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(dcdn_node::cli::exit_for(&e).code())
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints `value` as pretty JSON, or `text` when `json` is off.
fn emit<T: serde::Serialize + std::fmt::Display>(value: &T, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(value)?)?;
    } else {
        outln!("{value}")?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, log } => {
            log.init()?;
            runtime()?.block_on(run_node(&config))
        }
        Command::Check {
            origin,
            token,
            edges,
            origin_admin,
            cacert,
            object_bytes,
            live_pieces,
            live_piece_bytes,
            live_interval_ms,
            json,
        } => {
            use dcdn_node::up::check;
            let targets = check::Targets {
                origin,
                ingest_token: token,
                edges,
                origin_admin,
                ca_file: cacert,
            };
            let sizes = check::CheckSizes {
                object_bytes,
                live_pieces,
                live_piece_bytes,
                live_interval: std::time::Duration::from_millis(live_interval_ms),
            };
            let report = runtime()?.block_on(check::run(&targets, sizes));
            emit(&report, json)?;
            if report.ok {
                Ok(())
            } else {
                Err(Failure::CheckFailed("the check failed".into()).into())
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
            cacert,
            preheat,
            retries,
            json,
        } => {
            use dcdn_node::cli::transfer;
            let p = transfer::Publish {
                file,
                origin,
                name,
                token,
                live,
                ca_file: cacert,
                preheat,
                retries,
            };
            emit(&runtime()?.block_on(transfer::publish(p))?, json)
        }
        Command::Purge {
            name,
            origin,
            token,
            cacert,
        } => runtime()?.block_on(purge(&name, &origin, &token, cacert.as_deref())),
        Command::Fetch {
            url,
            output,
            edge,
            resume,
            response_timeout_secs,
            idle_timeout_secs,
            cacert,
            http3,
            json,
        } => {
            use dcdn_node::cli::transfer;
            let url = match edge {
                _ if url.contains("://") => url,
                Some(edge) => dcdn_node::cli::join(&edge, &format!("/v1/objects/{url}")),
                None => {
                    return Err(Failure::Usage(format!(
                        "{url:?} is not a URL; pass --edge (or set DCDN_EDGE) to fetch it by name"
                    ))
                    .into());
                }
            };
            let output = transfer::Output::parse(&output);
            let to_stdout = output == transfer::Output::Stdout;
            let f = transfer::Fetch {
                url,
                output,
                resume,
                timeouts: dcdn_node::client::FetchTimeouts {
                    response: std::time::Duration::from_secs(response_timeout_secs.max(1)),
                    idle: std::time::Duration::from_secs(idle_timeout_secs.max(1)),
                },
                ca_file: cacert,
                http3,
            };
            let fetched = runtime()?.block_on(transfer::fetch(f))?;
            match (json, to_stdout) {
                (true, false) => emit(&fetched, true),
                // Standard output carries the object: the summary goes aside.
                (true, true) => {
                    eprintln!("{}", serde_json::to_string_pretty(&fetched)?);
                    Ok(())
                }
                (false, false) => emit(&fetched, false),
                (false, true) => Ok(()),
            }
        }
        Command::Admin {
            command,
            node,
            token,
        } => {
            let call = command.call();
            let value =
                runtime()?.block_on(dcdn_node::cli::admin::call(&node, token.as_deref(), &call))?;
            outln!("{}", serde_json::to_string_pretty(&value)?)?;
            Ok(())
        }
        Command::Status {
            admins,
            token,
            json,
        } => {
            let status = runtime()?.block_on(dcdn_node::cli::admin::cluster_status(
                &admins,
                token.as_deref(),
            ));
            emit(&status, json)?;
            // The first node that could not be asked decides the exit code,
            // as it would for `dcdn admin status` against that node alone.
            match status
                .nodes
                .iter()
                .find_map(|n| Some((n.exit?, n.error.clone()?)))
            {
                Some((exit, e)) => Err(Failure::error(exit, e)),
                None => Ok(()),
            }
        }
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dcdn", &mut script);
            out!("{}", String::from_utf8_lossy(&script))
        }
        Command::Man { out } => man_pages(&out),
        Command::Up {
            relays,
            edges,
            dir,
            check,
            json,
            tls,
        } => {
            dcdn_node::logging::LogArgs::default().init()?;
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("dcdn-up-{}", std::process::id()))
            });
            let opts = dcdn_node::up::UpOptions {
                counts: dcdn_node::up::plan::Counts { relays, edges },
                dir,
                check,
                program: std::env::current_exe().context("locating the dcdn binary")?,
                json,
                tls,
            };
            if runtime()?.block_on(dcdn_node::up::run(opts))? {
                Ok(())
            } else {
                Err(Failure::CheckFailed("the local DCDN did not pass".into()).into())
            }
        }
        Command::Config {
            command: ConfigCommand::Check { file, json },
        } => config_check(&file, json),
        #[cfg(feature = "sim")]
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
            let options = if quick {
                bench::BenchOptions::quick()
            } else {
                bench::BenchOptions::default()
            };
            let report = bench::run_all(options, |name| {
                filter.as_deref().is_none_or(|f| name.contains(f))
            });
            let results = &report.results;
            if json {
                for r in results {
                    outln!("{}", serde_json::to_string(r).context("encoding result")?)?;
                }
            } else {
                outln!(
                    "{:<16} {:>14} {:>14} {:>7}  {:<10} baseline",
                    "bench",
                    "ours",
                    "baseline",
                    "ratio",
                    "unit"
                )?;
                for r in results {
                    outln!(
                        "{:<16} {:>14.1} {:>14.1} {:>7.2}  {:<10} {}",
                        r.bench,
                        r.ours,
                        r.baseline,
                        r.ratio,
                        r.unit,
                        r.baseline_name
                    )?;
                }
            }
            for (name, why) in &report.failures {
                eprintln!("bench {name} failed: {why}");
            }
            anyhow::ensure!(
                report.failures.is_empty(),
                "{} benchmark(s) failed",
                report.failures.len()
            );
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
        outln!("wrote {} and {}", ca_cert.display(), ca_key.display())?;
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
        outln!(
            "wrote {} (key {id}) and trust-bundle.json",
            key_path.display()
        )?;
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
        outln!("wrote {name}.pem and {name}.key ({role})")?;
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

async fn purge(
    name: &str,
    origin: &str,
    token: &str,
    cacert: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let client = dcdn_node::client::Client::with_ca(std::time::Duration::from_secs(30), cacert)?;
    let url = format!("{}/v1/objects/{name}", origin.trim_end_matches('/'));
    let resp = client
        .send(
            hyper::Method::DELETE,
            &url,
            Some(token),
            &[],
            axum::body::Body::empty(),
        )
        .await?;
    println!("{}", String::from_utf8_lossy(&resp.body));
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run_node(path: &std::path::Path) -> anyhow::Result<()> {
    use dcdn_node::roles::{run, settings::NodeSettings};
    let config = dcdn_node::config::NodeConfig::from_file(path, std::env::vars())?;
    // The same refusal `config check` gives (an edge or relay needs an
    // upstream), as a ConfigError so it exits 3.
    config
        .validate_runnable()
        .map_err(|message| dcdn_node::config::ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
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

fn config_check(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    // A file a node will run must also pass `validate_runnable` (an edge or
    // relay needs an upstream).
    let loaded = dcdn_node::config::NodeConfig::from_file(file, std::env::vars())
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            // A ConfigError, so it exits 3 like any invalid config.
            config.validate_runnable().map_err(|message| {
                dcdn_node::config::ConfigError::Invalid {
                    path: file.display().to_string(),
                    message,
                }
            })?;
            // The certificates a node would load at start, so a missing or
            // unreadable one fails the check rather than the node.
            if let Some(t) = &config.http_tls {
                dcdn_node::roles::certs::CertSet::load(&t.cert_dirs).map_err(|e| {
                    dcdn_node::config::ConfigError::Invalid {
                        path: file.display().to_string(),
                        message: e.to_string(),
                    }
                })?;
            }
            Ok(config)
        });
    if json {
        let value = match &loaded {
            Ok(config) => serde_json::json!({
                "file": file,
                "valid": true,
                "config_hash": config.config_hash(),
                "config": config,
            }),
            Err(e) => {
                serde_json::json!({ "file": file, "valid": false, "error": format!("{e:#}") })
            }
        };
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    }
    let config = loaded?;
    if !json {
        outln!(
            "# {}: valid (config hash {})",
            file.display(),
            config.config_hash()
        )?;
        out!("{}", config.to_toml())?;
    }
    Ok(())
}

/// One page for `dcdn` and one per subcommand, as `git` and `kubectl` ship.
fn man_pages(out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("dcdn".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let page = sub.clone().bin_name(format!("dcdn {}", sub.get_name()));
        pages.push((format!("dcdn-{}", sub.get_name()), page));
    }
    for (name, page) in pages {
        let path = out.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.clone())
            .render(&mut buf)
            .with_context(|| format!("rendering {}", path.display()))?;
        write_file(&path, &String::from_utf8_lossy(&buf), false)?;
    }
    outln!("wrote man pages to {}", out.display())?;
    Ok(())
}

//! `dcdn-operator`: the DCDN Kubernetes operator.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dcdn-operator",
    version = dcdn_node::VERSION,
    about = "The DCDN Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DcdnCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the operator against the cluster (in a pod, or with KUBECONFIG).
    Run {
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "DCDN_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
        /// Take a Lease before reconciling, so one of several replicas acts.
        #[arg(long, env = "DCDN_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        leader_election: bool,
        /// Name of the Lease replicas compete for (with --leader-election).
        #[arg(long, env = "DCDN_LEASE_NAME", default_value = "dcdn-operator")]
        lease_name: String,
        /// Namespace of the Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// This replica's name in the Lease.
        #[arg(long, env = "POD_NAME", default_value = "dcdn-operator")]
        identity: String,
        /// Watch only this namespace (default: all).
        #[arg(long, env = "DCDN_WATCH_NAMESPACE", default_value = "")]
        watch_namespace: String,
        #[command(flatten)]
        log: dcdn_node::logging::LogArgs,
    },
    /// Print every object the operator would apply for a DcdnCluster (key
    /// material excepted), as a YAML stream, for review and tests.
    Render {
        /// The DcdnCluster manifest.
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
        /// Namespace to use when the manifest names none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dcdn_operator::crd::crd_yaml()),
        Command::Run {
            http_addr,
            leader_election,
            lease_name,
            lease_namespace,
            identity,
            watch_namespace,
            log,
        } => {
            // The node's convention: RUST_LOG filter, --log-format/DCDN_LOG_FORMAT.
            log.init()?;
            // Both rustls backends are linked in test builds; pick one.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = dcdn_operator::serve::RunConfig {
                http_addr,
                leader_election,
                lease_name,
                lease_namespace,
                identity,
                watch_namespace: (!watch_namespace.is_empty()).then_some(watch_namespace),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(dcdn_operator::serve::run(config))?;
        }
        Command::Render { file, namespace } => {
            use anyhow::Context;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut cluster = dcdn_operator::crd::from_yaml(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a valid DcdnCluster: {e}", file.display())
            })?;
            cluster.metadata.namespace.get_or_insert(namespace);
            let objects = dcdn_operator::build::build(&cluster)
                .with_context(|| format!("building {}", file.display()))?;
            for o in objects {
                print!("---\n{}", serde_norway::to_string(&o)?);
            }
        }
    }
    Ok(())
}

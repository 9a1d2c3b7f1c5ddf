//! `dcdn-operator`: the DCDN Kubernetes operator.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dcdn-operator",
    version,
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

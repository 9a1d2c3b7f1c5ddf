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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dcdn_operator::crd::crd_yaml()),
    }
    Ok(())
}

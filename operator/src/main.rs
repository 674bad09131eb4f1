//! `relaycache-operator`: `run` the controller or print the CRD (`crdgen`).

use anyhow::Context as _;
use clap::Parser;
use relaycache_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => {
            let yaml = relaycache_operator::crd::crd_yaml().context("rendering the CRD")?;
            print!("{yaml}");
        }
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            relaycache_operator::app::run(args).await?;
        }
    }
    Ok(())
}

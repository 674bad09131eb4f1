//! The `relaycache` command: `serve`, `config init`, `config validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relaycache::config::{Config, DEFAULT_CONFIG_YAML};

#[derive(Parser)]
#[command(
    name = "relaycache",
    version,
    about = "A caching reverse proxy for LLM APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file; without one the built-in defaults apply
        /// (`relaycache config init` prints them).
        #[arg(short, long, env = "RELAYCACHE_CONFIG")]
        config: Option<PathBuf>,
        /// The configuration itself, as YAML text: how an injected sidecar
        /// gets its config without a ConfigMap in the app's namespace.
        #[arg(long, env = "RELAYCACHE_CONFIG_YAML", conflicts_with = "config")]
        config_yaml: Option<String>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration, every key commented.
    Init,
    /// Check a configuration file and name every mistake.
    Validate {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config {
            command: ConfigCommand::Init,
        } => {
            print!("{DEFAULT_CONFIG_YAML}");
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Validate { file },
        } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{}: invalid configuration:\n{err}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Serve {
            config,
            config_yaml,
        } => match serve(config, config_yaml) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("relaycache: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(path: Option<PathBuf>, inline: Option<String>) -> anyhow::Result<()> {
    let config = match (&path, inline) {
        (Some(path), _) => Config::load(path)
            .with_context(|| format!("invalid configuration {}", path.display()))?,
        (None, Some(text)) => Config::from_yaml(&text)
            .context("invalid configuration in --config-yaml / RELAYCACHE_CONFIG_YAML")?,
        (None, None) => Config::default(),
    };
    // Held to the end: dropping it writes the lines still queued.
    let _log = relaycache::telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(relaycache::run(config, shutdown_signal()))?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C via the portable path still works.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

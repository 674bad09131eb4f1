//! The `relaycache` command: `serve`, `config init`, `config validate`,
//! `config prices`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relaycache::config::{Config, PriceTable, DEFAULT_CONFIG_YAML};

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
    /// Print the prices hits are counted in dollars with: the built-in
    /// table, and `cache.prices` of a config file over it.
    Prices {
        /// Config file whose `cache.prices` apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config {
            command: ConfigCommand::Init,
        } => {
            emit(DEFAULT_CONFIG_YAML);
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
        Command::Config {
            command: ConfigCommand::Prices { config },
        } => {
            let config = match config.as_deref().map(Config::load).transpose() {
                Ok(config) => config.unwrap_or_default(),
                Err(err) => {
                    eprintln!("invalid configuration:\n{err}");
                    return ExitCode::from(2);
                }
            };
            emit(&PriceTable::new(&config.cache.prices).to_string());
            ExitCode::SUCCESS
        }
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

/// Writes to standard output; a reader that stopped reading (`| head`)
/// is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
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

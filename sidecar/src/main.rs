//! The `relaycache` command: `serve` here; `config …`, `key …` and `top` in
//! [`relaycache::cli`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relaycache::cli::{CacheCommand, ConfigCommand, KeyCommand, TopArgs};
use relaycache::config::{Config, NoticeLevel};

/// mimalloc instead of the C library's allocator: the process holds many
/// long-lived entries between short-lived request buffers, and mimalloc
/// keeps less memory per stored answer and spends less time allocating
/// (docs/benchmarks.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, the same
/// in mimalloc 2 and 3; the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Gives freed memory back to the system at once rather than after
/// mimalloc's default delay, so that what a burst of large request bodies
/// freed is not still counted against the pod's memory limit when the
/// next burst comes. An operator's `MIMALLOC_PURGE_DELAY` still wins:
/// mimalloc read it at start, and a default does not replace a value from
/// the environment.
#[allow(unsafe_code)]
fn return_freed_memory_at_once() {
    // SAFETY: mi_option_set_default takes an option index and a value,
    // checks the index against the options it has, and only stores the
    // value; it may be called at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 0) }
}

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
    /// Explain cache keys: why a request missed, how two requests differ,
    /// a credential's tenant id.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Work with a running process's entries through its admin endpoints.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// A live view of one process or a cluster through the admin
    /// endpoints: requests per second, hit ratio by tier, tokens and
    /// dollars saved, upstream latency, members.
    Top(TopArgs),
}

fn main() -> ExitCode {
    return_freed_memory_at_once();
    match Cli::parse().command {
        Command::Config { command } => command.run(),
        Command::Key { command } => command.run(),
        Command::Cache { command } => command.run(),
        Command::Top(args) => args.run(),
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
    let (config, notices) = match (&path, inline) {
        (Some(path), _) => {
            let loaded = Config::load_with_notices(path)
                .with_context(|| format!("invalid configuration {}", path.display()))?;
            (loaded.config, loaded.notices)
        }
        (None, Some(text)) => {
            let loaded = Config::read(&text)
                .context("invalid configuration in --config-yaml / RELAYCACHE_CONFIG_YAML")?;
            (loaded.config, loaded.notices)
        }
        (None, None) => (Config::default(), Vec::new()),
    };
    // Held to the end: dropping it writes the lines still queued.
    let _log = relaycache::telemetry::init(&config.log);
    for notice in &notices {
        match notice.level() {
            NoticeLevel::Warn => tracing::warn!("{notice}"),
            NoticeLevel::Info => tracing::info!("{notice}"),
        }
    }
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

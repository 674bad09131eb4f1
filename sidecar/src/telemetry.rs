//! Log output: text or JSON lines through tracing, written off the request
//! path. A request thread only queues its line; one writer thread drains
//! the queue to standard output. When the queue is full (standard output
//! slower than the requests), lines are dropped rather than making
//! requests wait, and counted (`relaycache_log_lines_dropped_total`).
//! Whatever is queued is written before the process exits.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines the writer queue holds before new ones are dropped: at about
/// 300 bytes a line, some 40 MB at most, and a few hundred milliseconds of
/// the fastest request rates measured.
const QUEUED_LINES: usize = 128 * 1024;

/// Bytes of lines the writer thread gathers into one write to standard
/// output while more are queued.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The dropped-lines counter of the installed writer.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped because the writer fell behind, since start.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Keeps the writer thread alive; dropping it writes every queued line.
/// Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the level.
pub fn init(config: &LogConfig) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("relaycache-log")
        // The writer thread flushes whenever the queue is empty, so under
        // load it writes many lines per system call, and when idle each
        // line at once.
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stdout(),
        ));
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    LogGuard {
        _writer: installed.is_ok().then_some(guard),
    }
}

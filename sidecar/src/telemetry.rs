//! Log output: text or JSON lines through tracing, written off the request
//! path. A request thread only queues its line; one writer thread drains
//! the queue to standard output. When the queue is full (standard output
//! slower than the requests), lines are dropped rather than making
//! requests wait, and counted (`relaycache_log_lines_dropped_total`).
//! Whatever is queued is written before the process exits. Request lines
//! skip tracing's formatter: the proxy writes them itself, the same bytes
//! (see `access_log`), into the same queue.

use std::sync::OnceLock;

use std::io::Write;

use tracing::Dispatch;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
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

/// Where request lines go when the proxy writes them itself: the
/// installed writer queue, in the log's format. Set only when lines carry
/// no colours (standard output is not a terminal).
pub(crate) struct AccessSink {
    writer: NonBlocking,
    /// Text or JSON lines.
    pub(crate) format: LogFormat,
}

impl AccessSink {
    /// Queues one whole line (dropped and counted if the queue is full).
    pub(crate) fn write(&self, line: &[u8]) {
        // A lossy writer reports success even when it drops the line.
        let _ = self.writer.clone().write_all(line);
    }
}

static ACCESS: OnceLock<AccessSink> = OnceLock::new();

/// The sink for request lines, if the installed log takes them directly.
pub(crate) fn access_sink() -> Option<&'static AccessSink> {
    ACCESS.get()
}

/// The subscriber of the given settings, writing to `writer`: the one
/// [`init`] installs, and the reference the request lines are checked
/// against.
pub(crate) fn subscriber<W>(filter: EnvFilter, writer: W, format: LogFormat, ansi: bool) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .into(),
        LogFormat::Text => builder.finish().into(),
    }
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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let installed = subscriber(filter, writer.clone(), config.format, ansi)
        .try_init()
        .is_ok();
    if installed && !ansi {
        let _ = ACCESS.set(AccessSink {
            writer,
            format: config.format,
        });
    }
    LogGuard {
        _writer: installed.then_some(guard),
    }
}

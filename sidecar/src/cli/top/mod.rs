//! `relaycache top`: a live view of one process or a cluster through the
//! admin endpoints, refreshed every `--interval`; `--once` prints a
//! plain-text snapshot for scripts.
//!
//! [`fetch`] reads `/stats`, `/metrics` and `/members`; [`reading`] turns
//! two readings into rates and upstream percentiles; [`report`] holds one
//! refresh and its text; [`view`] draws it.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::emit;

pub mod fetch;
pub mod reading;
pub mod report;
pub mod view;

use fetch::{Fetcher, Watch};

/// `relaycache top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// A process's admin URL (`server.admin_listen`); repeat it to watch
    /// several. A cluster member's also shows the cluster's members.
    #[arg(
        long = "admin",
        value_name = "URL",
        default_value = "http://127.0.0.1:9787"
    )]
    admins: Vec<String>,
    /// Sent as `Authorization: Bearer TOKEN` (server.admin_token).
    #[arg(long, env = "RELAYCACHE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Time between refreshes (`500ms`, `2s`).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Print one plain-text snapshot (totals since start) and exit: 0 when
    /// every process answered, 1 when one is down.
    #[arg(long)]
    once: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(interval) if interval >= Duration::from_millis(100) => Ok(interval),
        Ok(_) => Err("the interval must be at least 100ms".into()),
        Err(err) => Err(err.to_string()),
    }
}

impl TopArgs {
    /// Runs the command.
    pub fn run(self) -> ExitCode {
        if !self.once && !std::io::stdout().is_terminal() {
            eprintln!(
                "relaycache top: standard output is not a terminal; use --once for a plain-text snapshot"
            );
            return ExitCode::from(2);
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("relaycache top: cannot start the async runtime: {err}");
                return ExitCode::FAILURE;
            }
        };
        let timeout = self
            .interval
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut watch = Watch::new(&self.admins, Fetcher::new(self.token, timeout));
        if self.once {
            let report = runtime.block_on(watch.refresh());
            emit(&report.snapshot());
            return if report.all_up() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
        match live(&runtime, &mut watch, self.interval) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("relaycache top: the terminal failed: {err}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The live view until `q`, Esc or Ctrl-C. The terminal is restored on
/// the way out, also on a panic (ratatui's hook).
fn live(
    runtime: &tokio::runtime::Runtime,
    watch: &mut Watch,
    interval: Duration,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let outcome = (|| loop {
        let report = runtime.block_on(watch.refresh());
        terminal.draw(|frame| view::draw(frame, &report, interval))?;
        let next = Instant::now() + interval;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => {
                    terminal.draw(|frame| view::draw(frame, &report, interval))?;
                }
                _ => {}
            }
        }
    })();
    let restored = ratatui::try_restore();
    outcome.and(restored)
}

/// `q`, Esc and Ctrl-C quit.
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

//! `relaycache top`: a live view of one process or a cluster through the
//! admin endpoints, refreshed every `--interval`; `--once` prints a
//! plain-text snapshot for scripts.
//!
//! [`fetch`] reads `/stats`, `/metrics` and `/members`; [`reading`] turns
//! two readings into rates and upstream percentiles; [`report`] holds one
//! refresh and its text; [`view`] draws it.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::emit;

pub mod fetch;
pub mod reading;
pub mod report;
pub mod view;

use fetch::{Fetcher, Watch};
use report::Report;

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
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
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
        let outcome = live(&runtime, watch, self.interval);
        runtime.shutdown_background();
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("relaycache top: the terminal failed: {err}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The live view until `q`, Esc or Ctrl-C. Refreshes run on the
/// runtime's worker, so keys are read while a process is slow to answer.
/// The terminal is restored on the way out, also on a panic (ratatui's
/// hook).
fn live(
    runtime: &tokio::runtime::Runtime,
    mut watch: Watch,
    interval: Duration,
) -> std::io::Result<()> {
    let (sender, reports) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if sender.send(watch.refresh().await).is_err() {
                return;
            }
        }
    });
    let mut terminal = ratatui::try_init()?;
    let outcome = (|| {
        let mut shown = Report {
            processes: Vec::new(),
        };
        terminal.draw(|frame| view::draw(frame, &shown, interval))?;
        loop {
            if let Some(report) = reports.try_iter().last() {
                shown = report;
                terminal.draw(|frame| view::draw(frame, &shown, interval))?;
            }
            if !event::poll(Duration::from_millis(100))? {
                continue;
            }
            match event::read()? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => {
                    terminal.draw(|frame| view::draw(frame, &shown, interval))?;
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

//! The `relaycache` subcommands that do not serve: `config …`, `key …`,
//! `cache …` and `top`.
//! Each returns the process's exit code; `main.rs` only parses and
//! dispatches (and runs `serve`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::{Config, ConfigError, Notice, PriceTable, DEFAULT_CONFIG_YAML};

pub mod cache;
pub mod key;
pub mod top;
mod transfer;

pub use cache::CacheCommand;
pub use key::KeyCommand;
pub use top::TopArgs;

/// `relaycache config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration, every key commented.
    Init,
    /// Check a configuration file and name every mistake.
    Validate {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the native configuration a cc-relay file means (notices on
    /// stderr); a native file is printed normalised.
    Migrate {
        /// The file to convert.
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

impl ConfigCommand {
    /// Runs the command.
    pub fn run(self) -> ExitCode {
        match self {
            ConfigCommand::Init => {
                emit(DEFAULT_CONFIG_YAML);
                ExitCode::SUCCESS
            }
            ConfigCommand::Validate { file } => match Config::load_with_notices(&file) {
                Ok(loaded) => {
                    print_notices(&file, &loaded.notices);
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(err) => invalid(&file, &err),
            },
            ConfigCommand::Migrate { file } => match Config::migrate_file(&file) {
                Ok(migrated) => {
                    print_notices(&file, &migrated.notices);
                    emit(&migrated.yaml);
                    ExitCode::SUCCESS
                }
                Err(err) => invalid(&file, &err),
            },
            ConfigCommand::Prices { config } => match load_or_default(config.as_deref()) {
                Ok(config) => {
                    emit(&PriceTable::new(&config.cache.prices).to_string());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            },
        }
    }
}

/// The config file at `path` (its notices on stderr), or the defaults
/// without one; an invalid file is reported and exits with 2.
pub(crate) fn load_or_default(path: Option<&Path>) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    match Config::load_with_notices(path) {
        Ok(loaded) => {
            print_notices(path, &loaded.notices);
            Ok(loaded.config)
        }
        Err(err) => Err(invalid(path, &err)),
    }
}

fn invalid(file: &Path, err: &ConfigError) -> ExitCode {
    eprintln!("{}: invalid configuration:\n{err}", file.display());
    ExitCode::from(2)
}

fn print_notices(file: &Path, notices: &[Notice]) {
    for notice in notices {
        eprintln!("{}: {notice}", file.display());
    }
}

/// Writes to standard output; a reader that stopped reading (`| head`)
/// is not an error worth a panic.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

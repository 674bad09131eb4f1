//! `relaycache key explain | diff | tenant`: why a request has the key it
//! has, where two requests' keys part, and a credential's tenant id.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{emit, load_or_default};
use crate::config::Config;
use crate::key::explain::{tenant_of, AskedRequest, Explained, KeyDifference};

/// `relaycache key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print every part of a request's key with its digest: the tenant id
    /// (never the credential), method, path, keyed headers, namespace, the
    /// canonical body's digest and the body fields ignore_fields removed.
    Explain {
        /// The request body (a JSON file; `-` reads standard input).
        request: PathBuf,
        /// Headers, path and config.
        #[command(flatten)]
        shape: RequestShape,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Name the first part in which two requests' keys differ, down to the
    /// JSON path of the first differing value in the body. Exits 0 when
    /// the keys are the same, 1 when they differ.
    Diff {
        /// The first request body (a JSON file).
        a: PathBuf,
        /// The second request body (a JSON file).
        b: PathBuf,
        /// Headers, path and config.
        #[command(flatten)]
        shape: RequestShape,
        /// A header of the first request only ('Name: value'); repeatable.
        #[arg(long = "a-header", value_name = "HEADER")]
        a_headers: Vec<String>,
        /// A header of the second request only ('Name: value'); repeatable.
        #[arg(long = "b-header", value_name = "HEADER")]
        b_headers: Vec<String>,
    },
    /// Read a credential on standard input and print its tenant id: what a
    /// purge by tenant names. The credential is never printed or logged.
    Tenant {
        /// The header the credential is presented in.
        #[arg(long, default_value = "x-api-key")]
        header: String,
        /// Config file whose cache.isolation and cache.key apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

/// What is keyed besides the body, shared by `explain` and `diff`.
#[derive(Debug, Args)]
pub struct RequestShape {
    /// A request header ('Name: value'); repeatable.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// The request's path and query.
    #[arg(long, default_value = "/v1/messages")]
    path: String,
    /// Config file whose cache.key and cache.isolation apply.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

impl KeyCommand {
    /// Runs the command.
    pub fn run(self) -> ExitCode {
        match self {
            KeyCommand::Explain {
                request,
                shape,
                json,
            } => {
                let explained = load_or_default(shape.config.as_deref())
                    .and_then(|config| explain(&config, &request, &shape, &[]));
                match explained {
                    Ok(explained) if json => {
                        let text = serde_json::to_string_pretty(&explained.explanation)
                            .unwrap_or_default();
                        emit(&format!("{text}\n"));
                        ExitCode::SUCCESS
                    }
                    Ok(explained) => {
                        emit(&explained.explanation.to_string());
                        ExitCode::SUCCESS
                    }
                    Err(code) => code,
                }
            }
            KeyCommand::Diff {
                a,
                b,
                shape,
                a_headers,
                b_headers,
            } => {
                let both = load_or_default(shape.config.as_deref()).and_then(|config| {
                    Ok((
                        explain(&config, &a, &shape, &a_headers)?,
                        explain(&config, &b, &shape, &b_headers)?,
                    ))
                });
                match both {
                    Ok((a, b)) => {
                        let difference = a.first_difference(&b);
                        emit(&format!("{difference}\n"));
                        if difference == KeyDifference::None {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        }
                    }
                    Err(code) => code,
                }
            }
            KeyCommand::Tenant { header, config } => {
                let config = match load_or_default(config.as_deref()) {
                    Ok(config) => config,
                    Err(code) => return code,
                };
                let mut credential = String::new();
                if let Err(err) = std::io::stdin().read_to_string(&mut credential) {
                    eprintln!("cannot read the credential from standard input: {err}");
                    return ExitCode::from(2);
                }
                match tenant_of(&config, &header, credential.trim()) {
                    Ok(id) => {
                        emit(&format!("{id}\n"));
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        eprintln!("{err}");
                        ExitCode::from(2)
                    }
                }
            }
        }
    }
}

/// The explanation of the request whose body is in `file`.
fn explain(
    config: &Config,
    file: &Path,
    shape: &RequestShape,
    own_headers: &[String],
) -> Result<Explained, ExitCode> {
    let body = read_body(file).map_err(|err| {
        eprintln!("cannot read {}: {err}", file.display());
        ExitCode::from(2)
    })?;
    let headers: Vec<String> = shape.headers.iter().chain(own_headers).cloned().collect();
    AskedRequest::new(&shape.path, &headers, body.into())
        .and_then(|request| request.explain(config))
        .map_err(|err| {
            eprintln!("{}: {err}", file.display());
            ExitCode::from(2)
        })
}

fn read_body(file: &Path) -> std::io::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        Ok(body)
    } else {
        std::fs::read(file)
    }
}

//! `relaycache cache purge | export | import`: the admin endpoints of a
//! running process, from the command line.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::emit;
use crate::entry::filter::{parse_time, EntryFilter};
use crate::key::Tenant;

/// How long one admin call may take (a purge of a large reserve lists it).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the admin endpoints are and the token they need.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// The process's admin address.
    #[arg(long, default_value = "http://127.0.0.1:9787")]
    pub admin: String,
    /// The admin token (server.admin_token).
    #[arg(long, env = "RELAYCACHE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Which entries an export or purge selects.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// The request's x-relaycache-namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The model the answer names.
    #[arg(long)]
    model: Option<String>,
    /// A tenant id, as `relaycache key tenant` prints it.
    #[arg(long)]
    tenant: Option<String>,
    /// Created at or after this RFC 3339 time.
    #[arg(long)]
    created_after: Option<String>,
    /// Created before this RFC 3339 time.
    #[arg(long)]
    created_before: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<EntryFilter, String> {
        filter_of(
            self.namespace,
            self.model,
            self.tenant,
            self.created_after,
            self.created_before,
        )
    }
}

/// `relaycache cache …`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Write the entries the filters select (every entry without one) as a
    /// bundle: versioned, zstd-compressed, one record per entry with its
    /// digest. Progress on a terminal; a summary line at the end.
    Export {
        /// Where to write the bundle (`-`: standard output).
        #[arg(short, long, default_value = "-")]
        output: std::path::PathBuf,
        /// Which entries.
        #[command(flatten)]
        filter: FilterArgs,
        /// The process to export from.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Store a bundle's entries; an entry held in a newer version is kept.
    /// A damaged or cut bundle is reported with the record's number, and
    /// every good record before it is kept.
    Import {
        /// The bundle (`-`: standard input).
        input: std::path::PathBuf,
        /// The process to import into.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove entries from every tier and, at a cluster member, every
    /// member: those the filters select (all must hold), or every entry
    /// with --all.
    Purge {
        /// Which entries.
        #[command(flatten)]
        filter: FilterArgs,
        /// Every entry (needed when no filter is given).
        #[arg(long)]
        all: bool,
        /// The process to purge through.
        #[command(flatten)]
        target: AdminTarget,
    },
}

impl CacheCommand {
    /// Runs the command.
    pub fn run(self) -> ExitCode {
        match self {
            CacheCommand::Export {
                output,
                filter,
                target,
            } => match filter.filter() {
                Ok(filter) => super::transfer::export(&target, &filter, &output),
                Err(message) => usage(&message),
            },
            CacheCommand::Import { input, target } => super::transfer::import(&target, &input),
            CacheCommand::Purge {
                filter,
                all,
                target,
            } => {
                let filter = match filter.filter() {
                    Ok(filter) => filter,
                    Err(message) => return usage(&message),
                };
                if filter.is_everything() && !all {
                    return usage("name what to purge (--namespace, --model, --tenant, --created-after, --created-before), or --all for every entry");
                }
                let path = if filter.is_everything() {
                    "/cache".to_string()
                } else {
                    format!("/cache?{}", filter.to_query())
                };
                match call(Method::DELETE, &target, &path) {
                    Ok((status, body)) if status.is_success() => {
                        emit(&format!("{}\n", String::from_utf8_lossy(&body)));
                        ExitCode::SUCCESS
                    }
                    Ok((status, body)) => {
                        eprintln!(
                            "the purge was refused ({status}): {}",
                            String::from_utf8_lossy(&body)
                        );
                        ExitCode::FAILURE
                    }
                    Err(err) => {
                        eprintln!("{err}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

fn filter_of(
    namespace: Option<String>,
    model: Option<String>,
    tenant: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
) -> Result<EntryFilter, String> {
    let tenant = match tenant {
        Some(id) => Some(Tenant::from_id(&id).ok_or_else(|| {
            "--tenant must be the 64 hex characters `relaycache key tenant` prints".to_string()
        })?),
        None => None,
    };
    let time = |text: Option<String>, name| {
        text.map(|text| parse_time(&text, name))
            .transpose()
            .map_err(|err| err.to_string())
    };
    Ok(EntryFilter {
        namespace,
        model,
        tenant,
        created_after: time(created_after, "--created-after")?,
        created_before: time(created_before, "--created-before")?,
    })
}

/// The admin endpoint `path` of `target`, as a URL.
pub(crate) fn url_of(target: &AdminTarget, path: &str) -> String {
    format!("{}{path}", target.admin.trim_end_matches('/'))
}

/// One call to an admin endpoint: its status and body.
pub(crate) fn call(
    method: Method,
    target: &AdminTarget,
    path: &str,
) -> Result<(StatusCode, Bytes), String> {
    let url = url_of(target, path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    runtime.block_on(async {
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &target.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|err| format!("{url} is not a URL this command can call: {err}"))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let exchange = async {
            let response = client.request(request).await.map_err(|err| {
                format!("cannot reach {url}: {err}; is relaycache running, and is --admin its server.admin_listen?")
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| format!("{url}: the answer broke off: {err}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {ADMIN_TIMEOUT:?}"))?
    })
}

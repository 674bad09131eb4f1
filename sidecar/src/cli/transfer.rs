//! `relaycache cache export | import`: bundles streamed to and from the
//! admin endpoints, with progress on a terminal and a summary line.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::cache::{url_of, AdminTarget};
use crate::bundle::{BundleReader, ChunkReader};
use crate::entry::filter::EntryFilter;
use crate::transfer::BUNDLE_CONTENT_TYPE;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A progress bar on standard error when it is a terminal; hidden otherwise.
fn progress(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_bar} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("cannot start the async runtime: {err}");
            ExitCode::FAILURE
        })
}

fn request(target: &AdminTarget, method: Method, url: &str) -> http::request::Builder {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = &target.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request
}

/// Streams an export into `output`, checking each record as it passes.
pub(super) fn export(target: &AdminTarget, filter: &EntryFilter, output: &Path) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let query = filter.to_query();
    let path = if query.is_empty() {
        "/cache/export".to_string()
    } else {
        format!("/cache/export?{query}")
    };
    let url = url_of(target, &path);
    let result = runtime.block_on(async {
        let mut out: Box<dyn Write + Send> = if output == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::File::create(output).map_err(|err| {
                format!("cannot write {}: {err}", output.display())
            })?)
        };
        let request = request(target, Method::GET, &url)
            .body(Full::new(Bytes::new()))
            .map_err(|err| format!("{url}: {err}"))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client.request(request).await.map_err(|err| {
            format!("cannot reach {url}: {err}; is relaycache running, and is --admin its server.admin_listen?")
        })?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(format!("the export was refused ({status}): {}", String::from_utf8_lossy(&body)));
        }
        let started = Instant::now();
        let bar = progress(None);
        let entries = Arc::new(AtomicU64::new(0));
        let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(16);
        let counted = Arc::clone(&entries);
        let checker = tokio::task::spawn_blocking(move || {
            let mut bundle = BundleReader::new(ChunkReader::new(chunk_rx))?;
            while bundle.next_entry()?.is_some() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<u64, crate::bundle::BundleError>(bundle.records_read())
        });
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| format!("the export broke off after {}: {err}", HumanBytes(bytes)))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).map_err(|err| format!("cannot write {}: {err}", output.display()))?;
                bytes += data.len() as u64;
                bar.set_position(bytes);
                bar.set_message(format!("{} entries", entries.load(Ordering::Relaxed)));
                // The checker only counts; a bundle it cannot read is
                // reported below, after everything received is written.
                let _ = chunk_tx.send(data).await;
            }
        }
        drop(chunk_tx);
        out.flush().map_err(|err| format!("cannot write {}: {err}", output.display()))?;
        bar.finish_and_clear();
        let checked = checker.await.map_err(|err| err.to_string())?;
        let elapsed = started.elapsed().as_secs_f64().max(1e-3);
        match checked {
            Ok(count) => Ok(format!(
                "exported {count} entries, {} in {elapsed:.1} s ({}/s) to {}",
                HumanBytes(bytes),
                HumanBytes((bytes as f64 / elapsed) as u64),
                if output == Path::new("-") { "standard output".to_string() } else { output.display().to_string() }
            )),
            Err(err) => Err(format!("the export is not whole: {err}")),
        }
    });
    finish(result)
}

/// Streams a bundle file to the import endpoint.
pub(super) fn import(target: &AdminTarget, input: &Path) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let url = url_of(target, "/cache/import");
    let result = runtime.block_on(async {
        let (mut reader, total): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<u64>) =
            if input == Path::new("-") {
                (Box::new(tokio::io::stdin()), None)
            } else {
                let file = tokio::fs::File::open(input)
                    .await
                    .map_err(|err| format!("cannot read {}: {err}", input.display()))?;
                let size = file.metadata().await.map(|m| m.len()).ok();
                (Box::new(file), size)
            };
        let bar = progress(total);
        let sent = Arc::new(AtomicU64::new(0));
        let (frame_tx, frame_rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(8);
        let counter = Arc::clone(&sent);
        let progress_bar = bar.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let at = counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        progress_bar.set_position(at);
                        let chunk = Bytes::copy_from_slice(&buffer[..n]);
                        if frame_tx.send(Ok(Frame::data(chunk))).await.is_err() {
                            break;
                        }
                    }
                    Err(err) => {
                        let _ = frame_tx.send(Err(Box::new(err))).await;
                        break;
                    }
                }
            }
        });
        let body = StreamBody::new(futures::stream::unfold(frame_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
        .boxed();
        let request = request(target, Method::POST, &url)
            .header(http::header::CONTENT_TYPE, BUNDLE_CONTENT_TYPE)
            .body(body)
            .map_err(|err| format!("{url}: {err}"))?;
        let client = Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::combinators::BoxBody<Bytes, BoxError>>();
        let started = Instant::now();
        let response = client.request(request).await.map_err(|err| {
            format!("cannot reach {url}: {err}; is relaycache running, and is --admin its server.admin_listen?")
        })?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("{url}: the answer broke off: {err}"))?
            .to_bytes();
        bar.finish_and_clear();
        let summary: serde_json::Value = serde_json::from_slice(&answer).map_err(|_| {
            format!("the import was refused ({status}): {}", String::from_utf8_lossy(&answer))
        })?;
        if summary.get("records").is_none() {
            return Err(format!("the import was refused ({status}): {summary}"));
        }
        let bytes = sent.load(Ordering::Relaxed);
        let number = |name: &str| summary[name].as_u64().unwrap_or(0);
        let mut line = format!(
            "imported {} of {} entries ({} kept a newer version, {} expired, {} too large), {} in {:.1} s",
            number("imported"),
            number("records"),
            number("kept_newer"),
            number("expired"),
            number("too_large"),
            HumanBytes(bytes),
            started.elapsed().as_secs_f64()
        );
        if summary["complete"] == true {
            Ok(line)
        } else {
            line.push_str(&format!(
                "; stopped: {}; every entry before it is kept",
                summary["error"].as_str().unwrap_or("the bundle is not whole")
            ));
            Err(line)
        }
    });
    finish(result)
}

/// Prints a transfer's summary line (or what went wrong) on standard
/// error; the exit code.
fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

//! `mlstack trace ...`: the trace store from the command line, thin wiring
//! into `observe::traces` (the receiver, the LSM-backed store, the tree).

use std::path::PathBuf;

use observe::traces::{SpanStore, TraceView};
use proto::trace_receiver::TraceReceiver;

use crate::Error;
use crate::cli::{TraceCommand, TraceShowArgs, TraceSourceArgs};

/// Sibling runs (and links) past this many are folded in `trace show`.
const FOLD: usize = 3;

/// The demo's store, the default of every `trace` command.
pub fn default_dir() -> PathBuf {
    crate::pipeline::cache_dir().join("traces")
}

/// Opens (`create`) or finds a store, on a blocking thread (recovery reads files).
pub async fn open_store(dir: PathBuf, create: bool) -> Result<SpanStore, Error> {
    tokio::task::spawn_blocking(move || {
        if create {
            SpanStore::open(&dir)
        } else {
            SpanStore::open_existing(&dir)
        }
    })
    .await
    .map_err(|e| Error::Task {
        what: "opening the trace store",
        reason: e.to_string(),
    })?
    .map_err(Error::Observe)
}

pub async fn run(cmd: &TraceCommand) -> Result<(), Error> {
    match cmd {
        TraceCommand::Serve(a) => {
            // A bad certificate or key fails before any port is bound.
            let tls = crate::server_tls(&a.tls_cert, &a.tls_key)?;
            let component = crate::component::Component::start(a.metrics_listen).await?;
            let dir = a.data.clone().unwrap_or_else(default_dir);
            let store = open_store(dir.clone(), true).await?;
            let r =
                TraceReceiver::start(a.listen, Some(a.query_listen), store, tls.as_ref()).await?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            // The one JSON line: export with OTEL_EXPORTER_OTLP_ENDPOINT=<otlp>,
            // read with `mlstack trace show ID --query <query>`.
            component.ready(serde_json::json!({
                "otlp": r.endpoint(),
                "query": r.query_addr().map(|q| format!("{scheme}://{q}")),
                "store": dir,
                "tls": if tls.is_some() { "on" } else { "off" },
            }));
            component.wait_for_signal().await;
            r.stop().await;
            component.stop().await;
            Ok(())
        }
        TraceCommand::Show(a) => show(a).await,
        TraceCommand::List(a) => {
            let list = match &a.source.query {
                Some(base) => {
                    let url = format!(
                        "{}/api/traces?limit={}",
                        base.trim_end_matches('/'),
                        a.limit
                    );
                    get_json(&url, a.source.ca.as_deref()).await?["traces"].clone()
                }
                None => {
                    let store = open_store(source_dir(&a.source), false).await?;
                    let limit = a.limit;
                    serde_json::to_value(
                        tokio::task::spawn_blocking(move || store.recent(limit))
                            .await
                            .map_err(|e| Error::Task {
                                what: "reading the trace store",
                                reason: e.to_string(),
                            })??,
                    )
                    .unwrap_or_default()
                }
            };
            for t in list.as_array().into_iter().flatten() {
                println!(
                    "{}  {}",
                    t["trace_id"].as_str().unwrap_or("-"),
                    t["root"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
    }
}

fn source_dir(s: &TraceSourceArgs) -> PathBuf {
    s.data.clone().unwrap_or_else(default_dir)
}

/// GETs a query URL; an https:// one trusts only `ca`.
async fn get_json(url: &str, ca: Option<&std::path::Path>) -> Result<serde_json::Value, Error> {
    let http = |reason: String| Error::Http {
        url: url.to_string(),
        reason,
    };
    let client = match ca {
        Some(ca) => {
            let pem = proto::tls::read_pem("--ca", ca).map_err(proto::Error::from)?;
            reqwest::Client::builder()
                .use_preconfigured_tls(
                    proto::tls::rustls_client_config(&pem).map_err(proto::Error::from)?,
                )
                .build()
                .map_err(|e| http(e.to_string()))?
        }
        None => reqwest::Client::new(),
    };
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| http(e.to_string()))?;
    let body = serde_json::from_str::<serde_json::Value>(&text);
    if !status.is_success() {
        let why = body
            .as_ref()
            .ok()
            .and_then(|b| b["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(http(format!("{status}: {why}")));
    }
    body.map_err(|e| http(format!("not JSON: {e}")))
}

/// `mlstack trace show`: from a receiver's query port or the store itself.
async fn show(a: &TraceShowArgs) -> Result<(), Error> {
    let id = observe::traces::parse_trace_id(&a.trace_id)?;
    let view: TraceView = match &a.source.query {
        Some(base) => {
            let url = format!("{}/api/traces/{id}", base.trim_end_matches('/'));
            serde_json::from_value(get_json(&url, a.source.ca.as_deref()).await?).map_err(|e| {
                Error::Http {
                    url,
                    reason: format!("not a trace: {e}"),
                }
            })?
        }
        None => {
            let store = open_store(source_dir(&a.source), false).await?;
            tokio::task::spawn_blocking(move || TraceView::load(&store, &id))
                .await
                .map_err(|e| Error::Task {
                    what: "reading the trace store",
                    reason: e.to_string(),
                })??
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
    } else {
        print!("{}", view.render(if a.all { usize::MAX } else { FOLD }));
    }
    Ok(())
}

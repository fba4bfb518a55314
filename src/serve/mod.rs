//! `sdg serve`: a web app to write a recipe, start runs, watch them live, and read their data. The server
//! is axum on the tokio runtime; the page is three static files compiled into the binary. Each run is an
//! `sdg run` child process over its own folder under the runs root, so the server holds no state a restart
//! could lose. Bound to a non-loopback address, every route but the two static assets needs the access
//! token printed at start.

pub mod data;
pub mod runs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use crate::config::Config;
use crate::export::{ExportSettings, formats::ExportFormat};
use crate::plan::Plan;
use runs::{Runs, RunsError};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// A starting recipe for the new-run form: the quickstart's, reading the run's uploaded files.
const STARTER_RECIPE: &str = "run: {seed: 42, batch_rows: 16}\n\
task:\n  name: my-dataset\n  domain: the uploaded documents\n  \
instruction: Write a question that a reader of the passage can answer from it, with a short answer.\n  \
num_samples: 20\n  source: local\n  local: {paths: [inputs], chunk: 800, min_chars: 120}\n  seed: 7\n\
models:\n  teacher: {provider: local, model: smollm2-135m-instruct}\n";

/// How the server is started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    /// Folder of the run folders.
    pub runs_dir: PathBuf,
    /// The `sdg` binary that runs the runs.
    pub exe: PathBuf,
    pub cache_dir: Option<PathBuf>,
    /// Required on every request when set (always set for non-loopback addresses).
    pub token: Option<String>,
}

struct App {
    runs: Runs,
    token: Option<String>,
}

type Shared = Arc<App>;

/// An error as the API answers it: a status and `{"error": ...}`.
struct ApiError(StatusCode, Value);

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, json!({"error": message.into()}))
    }
}

impl From<RunsError> for ApiError {
    fn from(error: RunsError) -> ApiError {
        let status = match &error {
            RunsError::NotFound(_) => StatusCode::NOT_FOUND,
            RunsError::Invalid(_) => StatusCode::BAD_REQUEST,
            RunsError::Conflict(_) => StatusCode::CONFLICT,
            RunsError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, json!({"error": error.to_string()}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// A random token: 32 hex digits from the OS.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The routes, for `serve` and for tests.
pub fn router(options: &ServeOptions) -> Result<Router, RunsError> {
    let runs = Runs::new(options.runs_dir.clone(), options.exe.clone(), options.cache_dir.clone())?;
    let app: Shared = Arc::new(App { runs, token: options.token.clone() });
    let reaper = Arc::clone(&app);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            reaper.runs.reap();
        }
    });
    Ok(Router::new()
        .route("/", get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { page(APP_CSS, "text/css; charset=utf-8") }))
        .route("/api/defaults", get(|| async { ok(json!({"yaml": STARTER_RECIPE})) }))
        .route("/api/formats", get(formats))
        .route("/api/kinds", get(kinds))
        .route("/api/validate", post(validate))
        .route("/api/estimate", post(estimate))
        .route("/api/config/parse", post(parse_config))
        .route("/api/config/render", post(render_config))
        .route("/api/drafts", post(new_draft))
        .route("/api/drafts/{id}/files", get(list_files))
        .route("/api/drafts/{id}/files/{name}", put(upload).layer(DefaultBodyLimit::max(runs::MAX_UPLOAD_BYTES)))
        .route("/api/runs", get(list_runs).post(start_run))
        .route("/api/runs/{id}", get(run_detail))
        .route("/api/runs/{id}/events", get(events))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/resume", post(resume))
        .route("/api/runs/{id}/data", get(data_page))
        .route("/api/runs/{id}/records/{record}", get(record))
        .route("/api/runs/{id}/rejects", get(rejects))
        .route("/api/runs/{id}/export/{format}", get(export))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, json!({"error": "no such route"})) })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app), require_token))
        .with_state(app))
}

/// Binds and serves until Ctrl-C. Prints the address (and the token, once) on stdout.
pub async fn serve(mut options: ServeOptions) -> anyhow::Result<()> {
    if !options.bind.ip().is_loopback() && options.token.is_none() {
        options.token = Some(new_token()?);
    }
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.bind))?;
    let address = listener.local_addr()?;
    let app = router(&options)?;
    match &options.token {
        Some(token) => {
            println!("sdg serve: http://{address}/?token={token}");
            println!("access token (needed on every request; shown only now): {token}");
        }
        None => println!("sdg serve: http://{address}/"),
    }
    println!("runs in {}", options.runs_dir.display());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The token check: `Authorization: Bearer T` or `?token=T` (for links and EventSource).
async fn require_token(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let Some(expected) = &app.token else { return next.run(request).await };
    let path = request.uri().path();
    if path == "/app.js" || path == "/app.css" {
        return next.run(request).await;
    }
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query =
        request.uri().query().and_then(|q| data::form_pairs(q).into_iter().find(|(k, _)| k == "token").map(|(_, v)| v));
    let given = from_header.or(from_query).unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return ApiError(StatusCode::UNAUTHORIZED, json!({"error": "missing or wrong access token"})).into_response();
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body_json(bytes: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// Where a config's relative paths point: the draft's folder when one is named, else the runs root.
fn base_dir(app: &App, body: &Value) -> Result<PathBuf, ApiError> {
    match body["id"].as_str() {
        Some(id) => Ok(app.runs.dir(id)?),
        None => Ok(app.runs.root().to_path_buf()),
    }
}

/// Every problem `sdg validate` would report for this config text, in its words.
pub fn validation_errors(yaml: &str, base_dir: &Path) -> Vec<Value> {
    let origin = Path::new("config.yaml");
    let checked = Config::parse(yaml, origin, base_dir).and_then(|(config, found)| Plan::build(config, found));
    match checked {
        Ok(_) => Vec::new(),
        Err(error) => error
            .diagnostics
            .iter()
            .map(|d| {
                let single = crate::config::ConfigError { origin: origin.to_path_buf(), diagnostics: vec![d.clone()] };
                json!({"line": d.line, "column": d.col, "key": d.path, "message": d.message, "text": single.to_string()})
            })
            .collect(),
    }
}

async fn validate(State(app): State<Shared>, bytes: Bytes) -> ApiResult {
    let body = body_json(&bytes)?;
    let yaml = body["yaml"].as_str().ok_or_else(|| ApiError::bad("`yaml` is missing"))?.to_string();
    let base = base_dir(&app, &body)?;
    let errors = tokio::task::spawn_blocking(move || validation_errors(&yaml, &base))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    ok(json!({"ok": errors.is_empty(), "errors": errors}))
}

async fn parse_config(bytes: Bytes) -> ApiResult {
    let body = body_json(&bytes)?;
    let yaml = body["yaml"].as_str().ok_or_else(|| ApiError::bad("`yaml` is missing"))?;
    let node = crate::config::yaml::parse(yaml)
        .map_err(|e| ApiError::bad(format!("config.yaml:{}:{}: invalid YAML: {}", e.line, e.col, e.message)))?;
    ok(json!({"value": crate::config::preset::to_json(&node)}))
}

async fn render_config(bytes: Bytes) -> ApiResult {
    let body = body_json(&bytes)?;
    let value = body.get("value").ok_or_else(|| ApiError::bad("`value` is missing"))?;
    ok(json!({"yaml": crate::config::preset::to_yaml(value)}))
}

/// A dry run of the config (`sdg run --dry-run`): what would be asked of each model, sending nothing.
async fn estimate(State(app): State<Shared>, bytes: Bytes) -> ApiResult {
    let body = body_json(&bytes)?;
    let yaml = body["yaml"].as_str().ok_or_else(|| ApiError::bad("`yaml` is missing"))?.to_string();
    let base = base_dir(&app, &body)?;
    let exe = app.runs.exe().to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        if !validation_errors(&yaml, &base).is_empty() {
            return Err("the config has errors; see validation".to_string());
        }
        dry_run(&exe, &yaml, &base)
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?
    .map_err(ApiError::bad)?;
    ok(report)
}

fn dry_run(exe: &Path, yaml: &str, base: &Path) -> Result<Value, String> {
    let scratch = tempfile::Builder::new().prefix("sdg-estimate-").tempdir().map_err(|e| e.to_string())?;
    // Relative paths in the config are relative to `base`, so the file is written there under a private name.
    let config_in_base = base.join(format!(".estimate-{}.yaml", blake3::hash(yaml.as_bytes()).to_hex()));
    std::fs::write(&config_in_base, yaml).map_err(|e| e.to_string())?;
    let output = std::process::Command::new(exe)
        .current_dir(base)
        .arg("run")
        .arg(&config_in_base)
        .arg("-o")
        .arg(scratch.path().join("out"))
        .args(["--dry-run", "--quiet"])
        .output();
    let _ = std::fs::remove_file(&config_in_base);
    let output = output.map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("dry run failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(parse_estimate(&String::from_utf8_lossy(&output.stdout)))
}

/// The table `sdg run --dry-run` prints, as JSON.
fn parse_estimate(text: &str) -> Value {
    let mut per_model = serde_json::Map::new();
    let (mut requests, mut prompt, mut completion, mut cost) = (0u64, 0u64, 0u64, 0f64);
    let mut notes = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"model") && fields.get(1) == Some(&"requests") {
            in_table = true;
            continue;
        }
        if in_table && fields.len() == 6 {
            let n = |i: usize| fields[i].parse::<u64>().ok();
            if let (Some(r), Some(_cached), Some(p), Some(c), Ok(money)) =
                (n(1), n(2), n(3), n(4), fields[5].parse::<f64>())
            {
                per_model.insert(
                    fields[0].to_string(),
                    json!({"requests": r, "prompt_tokens": p, "completion_tokens": c, "cost": money}),
                );
                requests += r;
                prompt += p;
                completion += c;
                cost += money;
                continue;
            }
        }
        if line.starts_with('(') {
            notes.push(line.trim_matches(|c| c == '(' || c == ')').to_string());
        }
    }
    json!({"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion, "cost": cost,
        "per_model": per_model, "notes": notes})
}

async fn formats() -> ApiResult {
    let formats: Vec<Value> = ExportFormat::ALL
        .iter()
        .map(|f| {
            let description = match f {
                ExportFormat::VerlRl => "verl RL (GRPO/PPO): prompt messages + reward_model ground truth",
                ExportFormat::VerlSft => "verl SFT: messages, prompt, response",
                ExportFormat::Messages => "chat messages (TRL SFTTrainer, datasets)",
                ExportFormat::Alpaca => "Alpaca: instruction, input, output",
                ExportFormat::ShareGpt => "ShareGPT conversations",
                ExportFormat::Jsonl => "the run's rows as JSON Lines",
            };
            json!({"name": f.name(), "description": description, "extension": f.extension()})
        })
        .collect();
    ok(json!({"formats": formats}))
}

/// The table of node kinds: name, role, summary, whether it calls models (its example's declared shape),
/// and its example config.
async fn kinds() -> ApiResult {
    let kinds: Vec<Value> = crate::kinds::KINDS
        .iter()
        .map(|k| {
            let calls_models = k.example_shape().is_some_and(|shape| shape.calls == sdg_operators::Calls::Models);
            json!({"name": k.name, "role": k.role, "summary": k.summary, "calls_models": calls_models,
                "example": k.example})
        })
        .collect();
    ok(json!({"kinds": kinds}))
}

async fn new_draft(State(app): State<Shared>) -> ApiResult {
    let id = app.runs.create()?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response())
}

async fn list_files(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    ok(app.runs.files(&id)?)
}

async fn upload(State(app): State<Shared>, UrlPath((id, name)): UrlPath<(String, String)>, bytes: Bytes) -> ApiResult {
    let stored = tokio::task::spawn_blocking(move || app.runs.upload(&id, &name, &bytes))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))??;
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}

async fn list_runs(State(app): State<Shared>) -> ApiResult {
    ok(tokio::task::spawn_blocking(move || app.runs.list()).await.map_err(|e| ApiError::bad(e.to_string()))?)
}

async fn start_run(State(app): State<Shared>, bytes: Bytes) -> ApiResult {
    let body = body_json(&bytes)?;
    let yaml = body["yaml"].as_str().ok_or_else(|| ApiError::bad("`yaml` is missing"))?.to_string();
    let id = match body["id"].as_str() {
        Some(id) => {
            app.runs.dir(id)?;
            id.to_string()
        }
        None => app.runs.create()?,
    };
    let started = Arc::clone(&app);
    let run_id = id.clone();
    tokio::task::spawn_blocking(move || {
        let errors = validation_errors(&yaml, &started.runs.dir(&run_id)?);
        if !errors.is_empty() {
            return Err(ApiError(StatusCode::BAD_REQUEST, json!({"error": "the config has errors", "errors": errors})));
        }
        Ok(started.runs.start(&run_id, &yaml)?)
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))??;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response())
}

/// Progress as the page shows it: the live file (or, once the run ended, the manifest's counts).
fn progress_of(app: &App, id: &str, summary: &Value, manifest: Option<&Value>) -> Result<Value, RunsError> {
    let mut progress = app.runs.progress(id)?.unwrap_or_else(|| json!({"nodes": {}}));
    progress["status"] = summary["status"].clone();
    if !summary["active"].as_bool().unwrap_or(false)
        && let Some(manifest) = manifest
    {
        progress["nodes"] = manifest["nodes"].clone();
        if summary["status"] == "completed" {
            progress["fraction"] = json!(1.0);
            progress["eta_s"] = Value::Null;
        }
        progress["elapsed_s"] = manifest["elapsed_s"].clone();
    }
    progress["models"] = manifest.map_or(json!({}), |m| m["models"].clone());
    Ok(progress)
}

/// A run's summary and progress, from one read of its manifest.
fn snapshot(app: &App, id: &str) -> Result<(Value, Value, Option<Value>), RunsError> {
    let manifest = app.runs.manifest(id)?;
    let summary = app.runs.summary_given(id, manifest.as_ref())?;
    let progress = progress_of(app, id, &summary, manifest.as_ref())?;
    Ok((summary, progress, manifest))
}

async fn run_detail(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let value = tokio::task::spawn_blocking(move || -> Result<Value, RunsError> {
        let dir = app.runs.dir(&id)?;
        let yaml = std::fs::read_to_string(dir.join("config.yaml")).unwrap_or_default();
        let (summary, progress, manifest) = snapshot(&app, &id)?;
        // The graph: from the manifest once the run has one, else planned from the config.
        let graph = match manifest.as_ref().map(|m| m["graph"].clone()) {
            Some(Value::Array(nodes)) => Value::Array(nodes),
            _ => Config::parse(&yaml, Path::new("config.yaml"), &dir)
                .and_then(|(config, found)| Plan::build(config, found))
                .map(|plan| {
                    Value::Array(
                        plan.nodes.iter().map(|n| json!({"id": n.id, "kind": n.kind, "inputs": n.inputs})).collect(),
                    )
                })
                .unwrap_or(json!([])),
        };
        Ok(json!({"summary": summary, "yaml": yaml, "graph": graph, "progress": progress, "manifest": manifest}))
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))??;
    ok(value)
}

/// Server-sent events: `progress` twice a second while the run is active, `status` when it changes; the
/// stream ends after the run has ended.
async fn events(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    app.runs.dir(&id)?;
    struct Watch {
        app: Shared,
        id: String,
        last_status: Option<String>,
        ended: bool,
        first: bool,
    }
    let start = Watch { app, id, last_status: None, ended: false, first: true };
    let stream = futures_util::stream::unfold(start, |mut watch| async move {
        if watch.ended {
            return None;
        }
        if !watch.first {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        watch.first = false;
        let (app, id) = (Arc::clone(&watch.app), watch.id.clone());
        let taken = tokio::task::spawn_blocking(move || snapshot(&app, &id)).await.ok().and_then(Result::ok);
        let (summary, progress, _) = taken?;
        let status = summary["status"].as_str().unwrap_or_default().to_string();
        let mut events =
            vec![Ok::<Event, std::convert::Infallible>(Event::default().event("progress").data(progress.to_string()))];
        if watch.last_status.as_deref() != Some(status.as_str()) {
            events.push(Ok(Event::default().event("status").data(summary.to_string())));
            watch.last_status = Some(status);
        }
        watch.ended = !summary["active"].as_bool().unwrap_or(false);
        Some((futures_util::stream::iter(events), watch))
    });
    let flat = futures_util::StreamExt::flatten(stream);
    Ok(Sse::new(flat).keep_alive(KeepAlive::default()).into_response())
}

async fn cancel(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    app.runs.cancel(&id)?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"status": "cancelling"}))).into_response())
}

async fn resume(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    app.runs.resume(&id)?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"status": "running"}))).into_response())
}

async fn data_page(State(app): State<Shared>, UrlPath(id): UrlPath<String>, RawQuery(query): RawQuery) -> ApiResult {
    let out = app.runs.dir(&id)?.join("out");
    let query = data::RowQuery::parse(query.as_deref().unwrap_or(""));
    let page = tokio::task::spawn_blocking(move || data::page(&out, &query))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})))?;
    ok(page)
}

async fn record(State(app): State<Shared>, UrlPath((id, record)): UrlPath<(String, String)>) -> ApiResult {
    let out = app.runs.dir(&id)?.join("out");
    let found = tokio::task::spawn_blocking(move || data::record(&out, &record))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})))?;
    match found {
        Some(value) => ok(value),
        None => Err(ApiError(StatusCode::NOT_FOUND, json!({"error": "no such record in this run"}))),
    }
}

async fn rejects(State(app): State<Shared>, UrlPath(id): UrlPath<String>, RawQuery(query): RawQuery) -> ApiResult {
    let out = app.runs.dir(&id)?.join("out");
    let pairs = data::form_pairs(query.as_deref().unwrap_or(""));
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let offset = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit = get("limit").and_then(|v| v.parse::<usize>().ok()).unwrap_or(50).clamp(1, 500);
    let text = get("q").filter(|q| !q.is_empty());
    let page = tokio::task::spawn_blocking(move || data::rejects(&out, offset, limit, text.as_deref()))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})))?;
    ok(page)
}

/// One export format of a completed run, as a download (written once under the run's `exports/`).
async fn export(State(app): State<Shared>, UrlPath((id, format)): UrlPath<(String, String)>) -> ApiResult {
    let format = ExportFormat::parse(&format).map_err(ApiError::bad)?;
    let dir = app.runs.dir(&id)?;
    if app.runs.status(&id)?.0 != "completed" {
        return Err(ApiError(StatusCode::CONFLICT, json!({"error": "only a completed run can be exported"})));
    }
    let file = tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
        let target = dir.join("exports").join(format.name());
        let file = target.join(format.name()).join(format!("train.{}", format.extension()));
        if !file.exists() {
            let settings = ExportSettings { formats: vec![format], ..ExportSettings::default() };
            crate::export::export(&dir.join("out"), &target, &settings).map_err(|e| e.to_string())?;
        }
        Ok(file)
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})))?;
    let bytes = tokio::fs::read(&file).await.map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": format!("{}: {e}", file.display())}))
    })?;
    let mut headers = HeaderMap::new();
    let content_type =
        if format.extension() == "parquet" { "application/vnd.apache.parquet" } else { "application/x-ndjson" };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let name = format!("{id}-{}.{}", format.name(), format.extension());
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok((headers, Body::from(bytes)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dry_run_table_becomes_json() {
        let text = "dry run: no model request was sent; estimates for the inputs as they are now\n\
                    model              requests     cached     prompt tok  max compl tok       cost\n\
                    teacher                  12          2           3400           3072     0.0125\n\
                    student                   4          0            800            256     0.0000\n\
                    (model calls of nodes downstream of qa are not included: they need real answers)\n";
        let value = parse_estimate(text);
        assert_eq!(value["requests"], 16);
        assert_eq!(value["prompt_tokens"], 4200);
        assert_eq!(value["per_model"]["teacher"]["completion_tokens"], 3072);
        assert!((value["cost"].as_f64().unwrap() - 0.0125).abs() < 1e-9);
        assert_eq!(value["notes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn validation_speaks_as_sdg_validate() {
        let dir = tempfile::tempdir().unwrap();
        let errors = validation_errors("nodes:\n  - id: a\n    kind: nope\n", dir.path());
        // Every problem at once, each as `sdg validate` prints it.
        assert_eq!(errors.len(), 3, "{errors:?}");
        let kind = errors.iter().find(|e| e["key"] == "nodes[0].kind").unwrap();
        assert!(kind["text"].as_str().unwrap().starts_with("config.yaml:3:11: `nodes[0].kind` unknown node kind"));
        assert_eq!((kind["line"].as_u64(), kind["column"].as_u64()), (Some(3), Some(11)));
        assert!(validation_errors(STARTER_RECIPE.replace("[inputs]", "[.]").as_str(), dir.path()).is_empty());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(new_token().unwrap().len(), 32);
    }
}

//! `sdg-test-hub`: a Hugging Face Hub REST server over a folder of repos, for tests of downloads.
//!
//! `sdg-test-hub --root DIR [--host 127.0.0.1] [--port 0] [--fail-first N] [--token T]` serves the model
//! repos `DIR/models/<owner>/<name>/...` and the dataset repos `DIR/datasets/<owner>/<name>/...`. On
//! start it prints exactly one line to stdout, `listening on http://HOST:PORT` (the real port when port
//! 0 was asked), and it runs until SIGTERM or SIGINT.
//!
//! # Branches
//! A repo folder is its `main` branch. A dataset's `.convert-parquet/` folder is instead the Hub's
//! auto-converted branch `refs/convert/parquet` (files laid out as `{config}/{split}/NNNN.parquet`),
//! and is no part of `main`: not listed, not served, not in its commit. In URLs the branch name is one
//! path segment, `refs%2Fconvert%2Fparquet`.
//!
//! # Routes (the part of the Hub API that `hf-hub` and `huggingface_hub` download with)
//! - `GET|HEAD /{owner}/{name}/resolve/{revision}/{*path}` and `/datasets/{owner}/{name}/resolve/...`:
//!   the file, with `x-repo-commit`, `etag` (quoted blake3 of the content), `accept-ranges: bytes` and
//!   `content-length`. One `Range: bytes=A-B`, `A-` or `-N` is answered 206 with `content-range`
//!   (an end past the file is clamped), an unsatisfiable one 416 with `content-range: bytes */LEN`;
//!   several ranges are ignored (200, the whole file). `revision` is `main` or the repo's commit, and
//!   for datasets also `refs/convert/parquet` or that branch's commit.
//!   Misses are 404 with `x-error-code` `RepositoryNotFound`, `RevisionNotFound` or `EntryNotFound`.
//! - `GET /api/models/{owner}/{name}` (also `.../revision/{revision}`) and `/api/datasets/...`: repo
//!   info, `{"id", "author", "sha", "private": false, "siblings": [{"rfilename"}], ...}`; for
//!   `.../revision/refs%2Fconvert%2Fparquet` the files and commit of that branch (404
//!   `RevisionNotFound` when the dataset has no `.convert-parquet/`).
//! - `GET /api/models?search=S&author=A&limit=N&full=true` and `/api/datasets?...`: the repos whose id
//!   contains `S` (ignoring case) and whose owner is `A`, sorted by id; `full` adds `siblings`.
//! - `GET /stats`: `{"file_requests", "injected_failures", "bytes_sent", "unauthorized_requests"}`;
//!   `bytes_sent` counts the file bytes sent (bodies of 200 and 206 answers), so tests can tell a
//!   ranged read from a whole download.
//!
//! The commit of a branch is the first 40 hex digits of a blake3 over its files' paths, sizes and
//! modification times: it changes when a file does. With `--fail-first N` the first `N` file requests
//! (GET or HEAD) are answered 503, for tests of retries. With `--token T` every route but `/stats`
//! wants `Authorization: Bearer T` and answers others 401 (before any injected failure), for tests
//! that a client sends its token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use serde_json::{Value, json};

/// The server shares 2 cores with the program under test: keep allocation cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
const ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");

/// A Hugging Face Hub REST server over a folder of repos, for tests.
#[derive(Debug, Parser)]
#[command(name = "sdg-test-hub", version)]
struct Args {
    /// Folder holding `models/<owner>/<name>/` and `datasets/<owner>/<name>/`.
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on; 0 picks a free port (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Answer the first N file requests with 503.
    #[arg(long, default_value_t = 0)]
    fail_first: u64,
    /// Require `Authorization: Bearer TOKEN` on every route but `/stats`.
    #[arg(long)]
    token: Option<String>,
}

/// The folder of a dataset that holds its `refs/convert/parquet` branch.
const CONVERT_DIR: &str = ".convert-parquet";
const CONVERT_REVISION: &str = "refs/convert/parquet";

#[derive(Clone, Copy, Debug)]
enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn folder(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

struct Server {
    root: PathBuf,
    failures_left: AtomicU64,
    file_requests: AtomicU64,
    injected_failures: AtomicU64,
    bytes_sent: AtomicU64,
    unauthorized_requests: AtomicU64,
    token: Option<String>,
    /// blake3 of a file's content, valid while its size and modification time are unchanged.
    etags: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl Server {
    /// The folder of a repo, when the names are plain and the folder exists.
    fn repo_dir(&self, kind: RepoKind, owner: &str, name: &str) -> Option<PathBuf> {
        let plain = |part: &str| !part.is_empty() && !part.starts_with('.') && !part.contains(['/', '\\']);
        let dir = self.root.join(kind.folder()).join(owner).join(name);
        (plain(owner) && plain(name) && dir.is_dir()).then_some(dir)
    }

    fn etag(&self, path: &Path, len: u64, modified: SystemTime) -> std::io::Result<String> {
        if let Ok(etags) = self.etags.lock()
            && let Some((cached_len, cached_modified, etag)) = etags.get(path)
            && (*cached_len, *cached_modified) == (len, modified)
        {
            return Ok(etag.clone());
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(path)?)?;
        let etag = hasher.finalize().to_hex().to_string();
        if let Ok(mut etags) = self.etags.lock() {
            etags.insert(path.to_path_buf(), (len, modified, etag.clone()));
        }
        Ok(etag)
    }

    /// A 401 answer when a token is required and the request lacks it.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token.as_ref()?;
        let sent = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if sent == Some(token.as_str()) {
            return None;
        }
        self.unauthorized_requests.fetch_add(1, Ordering::Relaxed);
        let mut response =
            json_response(StatusCode::UNAUTHORIZED, &json!({ "error": "Invalid credentials in Authorization header" }));
        response.headers_mut().insert(ERROR_CODE, HeaderValue::from_static("Unauthorized"));
        Some(response)
    }

    /// Takes one injected failure, if any are left.
    fn inject_failure(&self) -> bool {
        self.failures_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }
}

/// A repo's files as `/`-separated relative paths, sorted, with their metadata.
fn repo_files(dir: &Path) -> Vec<(String, std::fs::Metadata)> {
    let mut files: Vec<(String, std::fs::Metadata)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|item| item.file_type().is_file())
        .filter_map(|item| {
            let relative = item.path().strip_prefix(dir).ok()?;
            let parts: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            Some((parts.join("/"), item.metadata().ok()?))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// One branch of a repo: the folder its files are in, the files, and its commit.
struct Branch {
    root: PathBuf,
    files: Vec<(String, std::fs::Metadata)>,
    commit: String,
}

/// The branch `revision` names (a branch name or a commit), if the repo has it.
fn branch(kind: RepoKind, dir: &Path, revision: &str) -> Option<Branch> {
    let mut main = repo_files(dir);
    main.retain(|(path, _)| path.split('/').next() != Some(CONVERT_DIR));
    let main = Branch { root: dir.to_path_buf(), commit: repo_commit(&main), files: main };
    if revision == "main" || revision == main.commit {
        return Some(main);
    }
    let convert = dir.join(CONVERT_DIR);
    if matches!(kind, RepoKind::Dataset) && convert.is_dir() {
        let files = repo_files(&convert);
        let commit = repo_commit(&files);
        if revision == CONVERT_REVISION || revision == commit {
            return Some(Branch { root: convert, files, commit });
        }
    }
    None
}

fn repo_commit(files: &[(String, std::fs::Metadata)]) -> String {
    let mut hasher = blake3::Hasher::new();
    for (path, metadata) in files {
        let modified = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(path.as_bytes());
        hasher.update(&[0]);
        hasher.update(&metadata.len().to_le_bytes());
        hasher.update(&modified.to_le_bytes());
    }
    hasher.finalize().to_hex()[..40].to_string()
}

fn not_found(code: &'static str, message: String) -> Response {
    let mut response = json_response(StatusCode::NOT_FOUND, &json!({ "error": message }));
    response.headers_mut().insert(ERROR_CODE, HeaderValue::from_static(code));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A single byte range of a file of `len` bytes: `None` when the header is absent or not one range
/// (the whole file is sent), `Some(Err(()))` when it cannot be satisfied.
fn parse_range(header: Option<&HeaderValue>, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: u64 = start.parse().ok()?;
        let end: u64 = if end.is_empty() { u64::MAX } else { end.parse().ok()? };
        if end < start {
            return None;
        }
        if start >= len {
            return Some(Err(()));
        }
        (start, end.min(len - 1))
    };
    Some(Ok(range))
}

fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((end - start + 1) as usize);
    file.take(end - start + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn internal_error(error: impl std::fmt::Display) -> Response {
    json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": error.to_string() }))
}

/// A path inside a repo made only of plain names.
fn plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(name) if !name.is_empty()))
}

struct FileRequest {
    kind: RepoKind,
    owner: String,
    name: String,
    revision: String,
    path: String,
    head: bool,
    range: Option<HeaderValue>,
}

/// Answers a file request; blocking file I/O, so it runs on the blocking pool.
fn file_response(server: &Server, request: FileRequest) -> Response {
    let id = format!("{}/{}", request.owner, request.name);
    let Some(dir) = server.repo_dir(request.kind, &request.owner, &request.name) else {
        return not_found("RepositoryNotFound", format!("Repository {id} not found"));
    };
    let Some(Branch { root, files, commit }) = branch(request.kind, &dir, &request.revision) else {
        return not_found("RevisionNotFound", format!("Invalid rev id: {}", request.revision));
    };
    let file = root.join(&request.path);
    let on_branch = files.iter().any(|(path, _)| *path == request.path);
    let metadata = match std::fs::metadata(&file) {
        Ok(metadata) if plain_relative(&request.path) && on_branch && metadata.is_file() => metadata,
        _ => return not_found("EntryNotFound", format!("{} does not exist in {id}", request.path)),
    };
    let len = metadata.len();
    let etag = match server.etag(&file, len, metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH)) {
        Ok(etag) => etag,
        Err(error) => return internal_error(error),
    };
    let (status, start, end) = match parse_range(request.range.as_ref(), len) {
        None => (StatusCode::OK, 0, len.checked_sub(1)),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, Some(end)),
        Some(Err(())) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            response.headers_mut().insert(CONTENT_RANGE, header(&format!("bytes */{len}")));
            return response;
        }
    };
    let body_len = end.map_or(0, |end| end - start + 1);
    let body = match end {
        Some(end) if !request.head => match read_range(&file, start, end) {
            Ok(bytes) => bytes,
            Err(error) => return internal_error(error),
        },
        _ => Vec::new(),
    };
    server.bytes_sent.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    headers.insert(REPO_COMMIT, header(&commit));
    headers.insert(ETAG, header(&format!("\"{etag}\"")));
    if let (StatusCode::PARTIAL_CONTENT, Some(end)) = (status, end) {
        headers.insert(CONTENT_RANGE, header(&format!("bytes {start}-{end}/{len}")));
    }
    response
}

fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn file(
    server: Arc<Server>,
    kind: RepoKind,
    (owner, name, revision, path): (String, String, String, String),
    method: Method,
    headers: HeaderMap,
) -> Response {
    server.file_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    if server.inject_failure() {
        server.injected_failures.fetch_add(1, Ordering::Relaxed);
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "error": "injected failure" }));
    }
    let request = FileRequest {
        kind,
        owner,
        name,
        revision,
        path,
        head: method == Method::HEAD,
        range: headers.get(RANGE).cloned(),
    };
    tokio::task::spawn_blocking(move || file_response(&server, request)).await.unwrap_or_else(internal_error)
}

async fn model_file(
    State(server): State<Arc<Server>>,
    UrlPath(parts): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    file(server, RepoKind::Model, parts, method, headers).await
}

async fn dataset_file(
    State(server): State<Arc<Server>>,
    UrlPath(parts): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    file(server, RepoKind::Dataset, parts, method, headers).await
}

/// What the Hub says about a branch of a repo; `siblings` only when asked.
fn repo_json(kind: RepoKind, owner: &str, name: &str, branch: &Branch, siblings: bool) -> Value {
    let (files, commit) = (&branch.files, &branch.commit);
    let id = format!("{owner}/{name}");
    let mut info = json!({
        "_id": commit[..24],
        "id": id,
        "author": owner,
        "sha": commit,
        "private": false,
        "gated": false,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
    });
    if let RepoKind::Model = kind {
        info["modelId"] = json!(id);
    }
    if siblings {
        info["siblings"] = files.iter().map(|(path, _)| json!({ "rfilename": path })).collect();
    }
    info
}

async fn info(
    server: Arc<Server>,
    kind: RepoKind,
    (owner, name, revision): (String, String, Option<String>),
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    let id = format!("{owner}/{name}");
    tokio::task::spawn_blocking(move || {
        let Some(dir) = server.repo_dir(kind, &owner, &name) else {
            return not_found("RepositoryNotFound", format!("Repository {id} not found"));
        };
        let revision = revision.unwrap_or_else(|| "main".to_string());
        match branch(kind, &dir, &revision) {
            Some(branch) => json_response(StatusCode::OK, &repo_json(kind, &owner, &name, &branch, true)),
            None => not_found("RevisionNotFound", format!("Invalid rev id: {revision}")),
        }
    })
    .await
    .unwrap_or_else(internal_error)
}

async fn model_info(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    info(server, RepoKind::Model, (owner, name, None), headers).await
}

async fn model_info_at(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    info(server, RepoKind::Model, (owner, name, Some(revision)), headers).await
}

async fn dataset_info(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    info(server, RepoKind::Dataset, (owner, name, None), headers).await
}

async fn dataset_info_at(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    info(server, RepoKind::Dataset, (owner, name, Some(revision)), headers).await
}

/// `application/x-www-form-urlencoded` pairs of a query string.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(high), Some(low)) => {
                            out.push((high * 16 + low) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

async fn search(server: Arc<Server>, kind: RepoKind, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    let pairs = query_pairs(uri.query().unwrap_or(""));
    let param = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let needle = param("search").unwrap_or_default().to_lowercase();
    let author = param("author");
    let limit = param("limit").and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let full = param("full").is_some_and(|v| v == "true" || v == "1");
    tokio::task::spawn_blocking(move || {
        let base = server.root.join(kind.folder());
        let mut repos = Vec::new();
        for owner in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let owner_name = owner.file_name().to_string_lossy().into_owned();
            if author.as_ref().is_some_and(|author| *author != owner_name) {
                continue;
            }
            for repo in std::fs::read_dir(owner.path()).into_iter().flatten().flatten() {
                let name = repo.file_name().to_string_lossy().into_owned();
                let id = format!("{owner_name}/{name}");
                if repo.path().is_dir()
                    && id.to_lowercase().contains(&needle)
                    && let Some(main) = branch(kind, &repo.path(), "main")
                {
                    repos.push((id, owner_name.clone(), name, main));
                }
            }
        }
        repos.sort_by(|a, b| a.0.cmp(&b.0));
        let list: Vec<Value> =
            repos.iter().take(limit).map(|(_, owner, name, main)| repo_json(kind, owner, name, main, full)).collect();
        json_response(StatusCode::OK, &Value::Array(list))
    })
    .await
    .unwrap_or_else(internal_error)
}

async fn search_models(State(server): State<Arc<Server>>, uri: Uri, headers: HeaderMap) -> Response {
    search(server, RepoKind::Model, uri, headers).await
}

async fn search_datasets(State(server): State<Arc<Server>>, uri: Uri, headers: HeaderMap) -> Response {
    search(server, RepoKind::Dataset, uri, headers).await
}

async fn stats(State(server): State<Arc<Server>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "file_requests": server.file_requests.load(Ordering::Relaxed),
            "injected_failures": server.injected_failures.load(Ordering::Relaxed),
            "bytes_sent": server.bytes_sent.load(Ordering::Relaxed),
            "unauthorized_requests": server.unauthorized_requests.load(Ordering::Relaxed),
        }),
    )
}

fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/api/models", get(search_models))
        .route("/api/datasets", get(search_datasets))
        .route("/api/models/{owner}/{name}", get(model_info))
        .route("/api/models/{owner}/{name}/revision/{revision}", get(model_info_at))
        .route("/api/datasets/{owner}/{name}", get(dataset_info))
        .route("/api/datasets/{owner}/{name}/revision/{revision}", get(dataset_info_at))
        .route("/datasets/{owner}/{name}/resolve/{revision}/{*path}", get(dataset_file))
        .route("/{owner}/{name}/resolve/{revision}/{*path}", get(model_file))
        .route("/stats", get(stats))
        .with_state(server)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn serve(server: Arc<Server>, addr: SocketAddr) -> std::io::Result<()> {
    use std::io::Write as _;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}")?;
        stdout.flush()?;
    }
    tokio::select! {
        served = axum::serve(listener, router(server)) => served,
        () = shutdown_signal() => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.root.is_dir() {
        eprintln!("sdg-test-hub: --root {} is not a folder", args.root.display());
        return std::process::ExitCode::from(2);
    }
    let server = Arc::new(Server {
        root: args.root,
        failures_left: AtomicU64::new(args.fail_first),
        file_requests: AtomicU64::new(0),
        injected_failures: AtomicU64::new(0),
        bytes_sent: AtomicU64::new(0),
        unauthorized_requests: AtomicU64::new(0),
        token: args.token,
        etags: Mutex::new(HashMap::new()),
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sdg-test-hub: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(server, SocketAddr::new(args.host, args.port)));
    runtime.shutdown_background();
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdg-test-hub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
        parse_range(Some(&HeaderValue::from_str(text).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-0", 10), Some(Ok((0, 0))));
        assert_eq!(range("bytes=2-", 10), Some(Ok((2, 9))));
        assert_eq!(range("bytes=5-100", 10), Some(Ok((5, 9))));
        assert_eq!(range("bytes=-3", 10), Some(Ok((7, 9))));
        assert_eq!(range("bytes=10-12", 10), Some(Err(())));
        assert_eq!(range("bytes=0-0", 0), Some(Err(())));
        assert_eq!(range("bytes=0-1,4-5", 10), None);
        assert_eq!(range("bytes=5-2", 10), None);
        assert_eq!(range("items=0-1", 10), None);
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            query_pairs("search=tiny%2Dmodel&author=a+b&full"),
            [("search".into(), "tiny-model".into()), ("author".into(), "a b".into()), ("full".into(), String::new())]
        );
        assert_eq!(query_pairs("q=100%"), [("q".to_string(), "100%".to_string())]);
    }
}

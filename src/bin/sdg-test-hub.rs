//! `sdg-test-hub`: a Hugging Face Hub REST server over a folder of repos, for tests of downloads and
//! uploads.
//!
//! `sdg-test-hub --root DIR [--host 127.0.0.1] [--port 0] [--fail-first N] [--token T]
//! [--lfs-chunk-size N]` serves the model repos `DIR/models/<owner>/<name>/...` and the dataset repos
//! `DIR/datasets/<owner>/<name>/...`. On start it prints exactly one line to stdout,
//! `listening on http://HOST:PORT` (the real port when port 0 was asked), and it runs until SIGTERM or
//! SIGINT.
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
//! # Uploads (the part of the Hub API that `huggingface_hub`'s `upload_folder` pushes with)
//! - `POST /api/repos/create` with `{"type", "name", "organization", "private"}`: makes the repo's
//!   folder; 409 when it exists. `organization` is required (the server has no accounts) and
//!   `private` is accepted but not modelled.
//! - `POST /api/datasets/{owner}/{name}/preupload/main` with `{"files": [{"path", "size", "sample"}]}`
//!   answers each file's `uploadMode`: `lfs` for files over 10 MiB, files whose base64 `sample` holds
//!   a NUL byte and binary extensions (`.parquet`, `.arrow`, `.safetensors`, archives, ...; a subset
//!   of the Hub's default `.gitattributes`), else `regular`.
//! - `POST /datasets/{owner}/{name}.git/info/lfs/objects/batch`, the git-lfs batch API (`upload`
//!   only): objects already stored get no actions; others get an `upload` action to
//!   `PUT /lfs/objects/{oid}` (no token wanted there, like a presigned storage URL) and a `verify`
//!   action to `POST /datasets/{owner}/{name}.git/info/lfs/objects/verify`. With `--lfs-chunk-size N`,
//!   objects over `N` bytes get a multipart action instead: `header` holds `chunk_size` and the part
//!   URLs `"1"`, `"2"`, ... (`PUT /lfs/objects/{oid}/parts/{n}`, answered with an `etag`), and `href`
//!   is the completion call `POST /lfs/objects/{oid}/complete` with `{"oid", "parts": [{"partNumber",
//!   "etag"}]}`. Uploaded bytes must hash to their oid (sha256); objects are kept under
//!   `ROOT/.lfs/objects/`.
//! - `POST /api/datasets/{owner}/{name}/commit/main` with an `application/x-ndjson` body: a `header`
//!   line (`summary`), then `file` (base64 `content`), `lfsFile` (`oid` of a stored object, `size`),
//!   `deletedFile` and `deletedFolder` lines. Every line is checked before anything is written;
//!   paths must be plain relative paths (no `..`, no absolute paths, nothing under `.convert-parquet`).
//!   Files are written to the repo's folder (so they can be downloaded back at once) and the answer is
//!   `{"success": true, "commitOid", "commitUrl", "hookOutput", "pullRequestUrl": null}`.
//!
//! `/stats` also counts `repos_created`, `commits`, `files_committed` (file and LFS file lines),
//! `lfs_objects_uploaded`, `lfs_parts_uploaded` and `bytes_received` (decoded file contents and LFS
//! object bytes).
//!
//! The commit of a branch is the first 40 hex digits of a blake3 over its files' paths, sizes,
//! modification times and (on Unix) inode numbers: it changes when a file does, even when a push
//! rewrites it with as many bytes within one clock tick. With `--fail-first N` the first `N` file
//! requests (GET or HEAD) are answered 503, for tests of retries. With `--token T` every route but `/stats` and
//! the LFS storage routes (`/lfs/...`) wants `Authorization: Bearer T` and answers others 401 (before
//! any injected failure), for tests that a client sends its token.

use sdg::io::url_query::form_pairs as query_pairs;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::header::{ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post, put};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
    /// Require `Authorization: Bearer TOKEN` on every route but `/stats` and the LFS storage routes.
    #[arg(long)]
    token: Option<String>,
    /// Have LFS objects over this many bytes uploaded in parts of this size (multipart transfer).
    #[arg(long)]
    lfs_chunk_size: Option<u64>,
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
    repos_created: AtomicU64,
    commits: AtomicU64,
    files_committed: AtomicU64,
    lfs_objects_uploaded: AtomicU64,
    lfs_parts_uploaded: AtomicU64,
    bytes_received: AtomicU64,
    token: Option<String>,
    lfs_chunk_size: Option<u64>,
    /// `http://HOST:PORT`, known once the listener is bound; LFS actions point there.
    base_url: OnceLock<String>,
    /// Commits are applied one at a time.
    commit_lock: Mutex<()>,
    /// blake3 of a file's content, valid while its size and modification time are unchanged.
    etags: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl Server {
    /// The folder of a repo, when the names are plain and the folder exists.
    fn repo_dir(&self, kind: RepoKind, owner: &str, name: &str) -> Option<PathBuf> {
        let dir = self.root.join(kind.folder()).join(owner).join(name);
        (plain_name(owner) && plain_name(name) && dir.is_dir()).then_some(dir)
    }

    fn base_url(&self) -> &str {
        self.base_url.get().map_or("http://127.0.0.1", String::as_str)
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

/// An owner or repo name that is one plain path segment.
fn plain_name(part: &str) -> bool {
    !part.is_empty() && !part.starts_with('.') && !part.contains(['/', '\\'])
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
        // A rewrite is a new inode (files are written aside and renamed into place).
        #[cfg(unix)]
        hasher.update(&std::os::unix::fs::MetadataExt::ino(metadata).to_le_bytes());
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
            "repos_created": server.repos_created.load(Ordering::Relaxed),
            "commits": server.commits.load(Ordering::Relaxed),
            "files_committed": server.files_committed.load(Ordering::Relaxed),
            "lfs_objects_uploaded": server.lfs_objects_uploaded.load(Ordering::Relaxed),
            "lfs_parts_uploaded": server.lfs_parts_uploaded.load(Ordering::Relaxed),
            "bytes_received": server.bytes_received.load(Ordering::Relaxed),
        }),
    )
}

// ---- Uploads ----

/// Files the Hub keeps in LFS by name (a subset of its default `.gitattributes`).
const LFS_EXTENSIONS: [&str; 24] = [
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gz",
    "h5",
    "joblib",
    "lz4",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "parquet",
    "pickle",
    "pkl",
    "pt",
    "pth",
    "safetensors",
    "tar",
    "tgz",
    "zip",
    "zst",
];

/// Files over this size go to LFS whatever their name, as on the Hub.
const LFS_THRESHOLD: u64 = 10 * 1024 * 1024;

fn bad_request(message: impl Into<String>) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message.into() }))
}

fn lfs_json(status: StatusCode, value: &Value) -> Response {
    let mut response = json_response(status, value);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/vnd.git-lfs+json"));
    response
}

/// Standard base64 (RFC 4648), padding optional; `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            bits |= value(c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// A lowercase hex sha256, the only LFS oid accepted.
fn valid_oid(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn lfs_dir(root: &Path) -> PathBuf {
    root.join(".lfs")
}

fn lfs_object(root: &Path, oid: &str) -> PathBuf {
    lfs_dir(root).join("objects").join(oid)
}

/// The size of a stored LFS object.
fn stored_size(root: &Path, oid: &str) -> Option<u64> {
    std::fs::metadata(lfs_object(root, oid)).ok().filter(|m| m.is_file()).map(|m| m.len())
}

/// Writes `bytes` to `path` whole: into a staging file under `ROOT/.lfs/tmp`, then renamed into place.
fn write_whole(root: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let staging = lfs_dir(root).join("tmp");
    std::fs::create_dir_all(&staging)?;
    let tmp = staging.join(format!("{}-{}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, bytes)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(&tmp, path)
}

/// Stores an LFS object after checking that `bytes` hash to `oid`.
fn store_object(server: &Server, oid: &str, bytes: &[u8]) -> Response {
    let actual = format!("{:x}", Sha256::digest(bytes));
    if actual != oid {
        return bad_request(format!("the content's sha256 is {actual}, not {oid}"));
    }
    if let Err(error) = write_whole(&server.root, &lfs_object(&server.root, oid), bytes) {
        return internal_error(error);
    }
    server.lfs_objects_uploaded.fetch_add(1, Ordering::Relaxed);
    server.bytes_received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Response::new(Body::empty())
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
}

async fn create_repo(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let field = |key: &str| request.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = match field("type").as_deref() {
        None | Some("model") => RepoKind::Model,
        Some("dataset") => RepoKind::Dataset,
        Some(other) => return bad_request(format!("repo type `{other}` is not served here")),
    };
    let (Some(name), Some(owner)) = (field("name"), field("organization")) else {
        return bad_request("`name` and `organization` are required (this server has no user accounts)");
    };
    if !plain_name(&owner) || !plain_name(&name) {
        return bad_request(format!("`{owner}/{name}` is not a valid repo id"));
    }
    let prefix = match kind {
        RepoKind::Model => String::new(),
        RepoKind::Dataset => "datasets/".to_string(),
    };
    let url = format!("{}/{prefix}{owner}/{name}", server.base_url());
    let dir = server.root.join(kind.folder()).join(&owner).join(&name);
    if dir.exists() {
        let what = match kind {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        };
        return json_response(
            StatusCode::CONFLICT,
            &json!({ "error": format!("You already created this {what} repo"), "url": url }),
        );
    }
    if let Err(error) = std::fs::create_dir_all(&dir) {
        return internal_error(error);
    }
    server.repos_created.fetch_add(1, Ordering::Relaxed);
    json_response(StatusCode::OK, &json!({ "url": url, "name": format!("{owner}/{name}") }))
}

/// The dataset repo's folder and its `main` branch, or the 404 the Hub would answer.
fn main_branch(server: &Server, owner: &str, name: &str, revision: &str) -> Result<(PathBuf, Branch), Box<Response>> {
    let Some(dir) = server.repo_dir(RepoKind::Dataset, owner, name) else {
        return Err(Box::new(not_found("RepositoryNotFound", format!("Repository {owner}/{name} not found"))));
    };
    match branch(RepoKind::Dataset, &dir, revision) {
        Some(branch) if branch.root == dir => Ok((dir, branch)),
        _ => Err(Box::new(not_found(
            "RevisionNotFound",
            format!("Invalid rev id: {revision} (only main takes commits here)"),
        ))),
    }
}

async fn preupload(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    tokio::task::spawn_blocking(move || {
        let (_, main) = match main_branch(&server, &owner, &name, &revision) {
            Ok(found) => found,
            Err(response) => return *response,
        };
        let request = match parse_json(&body) {
            Ok(request) => request,
            Err(message) => return bad_request(message),
        };
        let Some(files) = request.get("files").and_then(Value::as_array) else {
            return bad_request("`files` must be a list");
        };
        let mut answers = Vec::with_capacity(files.len());
        for file in files {
            let (Some(path), Some(size)) =
                (file.get("path").and_then(Value::as_str), file.get("size").and_then(Value::as_u64))
            else {
                return bad_request("each file needs `path` and `size`");
            };
            let Some(sample) = base64_decode(file.get("sample").and_then(Value::as_str).unwrap_or("")) else {
                return bad_request(format!("the sample of {path} is not base64"));
            };
            let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
            let lfs = size > LFS_THRESHOLD || sample.contains(&0) || LFS_EXTENSIONS.contains(&extension.as_str());
            answers.push(
                json!({ "path": path, "uploadMode": if lfs { "lfs" } else { "regular" }, "shouldIgnore": false }),
            );
        }
        json_response(StatusCode::OK, &json!({ "files": answers, "commitOid": main.commit }))
    })
    .await
    .unwrap_or_else(internal_error)
}

/// The repo name in a git-lfs URL (`{name}.git`).
fn git_name(name: &str) -> Option<&str> {
    name.strip_suffix(".git").filter(|name| plain_name(name))
}

async fn lfs_batch(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    let Some(name) = git_name(&name).map(str::to_string) else {
        return not_found("RepositoryNotFound", format!("Repository {owner}/{name} not found"));
    };
    if server.repo_dir(RepoKind::Dataset, &owner, &name).is_none() {
        return not_found("RepositoryNotFound", format!("Repository {owner}/{name} not found"));
    }
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    if request.get("operation").and_then(Value::as_str) != Some("upload") {
        return lfs_json(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "message": "only `upload` is served" }));
    }
    let Some(objects) = request.get("objects").and_then(Value::as_array) else {
        return lfs_json(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "message": "`objects` must be a list" }));
    };
    let base = server.base_url().to_string();
    let verify = json!({ "href": format!("{base}/datasets/{owner}/{name}.git/info/lfs/objects/verify"), "header": {} });
    let mut multipart = false;
    let mut answers = Vec::with_capacity(objects.len());
    for object in objects {
        let oid = object.get("oid").and_then(Value::as_str).unwrap_or_default();
        let Some(size) = object.get("size").and_then(Value::as_u64) else {
            return lfs_json(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "message": "each object needs a `size`" }));
        };
        if !valid_oid(oid) {
            answers.push(json!({ "oid": oid, "size": size, "error": { "code": 422, "message": "invalid oid" } }));
            continue;
        }
        if stored_size(&server.root, oid) == Some(size) {
            answers.push(json!({ "oid": oid, "size": size }));
            continue;
        }
        let upload = match server.lfs_chunk_size {
            Some(chunk) if size > chunk => {
                multipart = true;
                let mut header = serde_json::Map::new();
                header.insert("chunk_size".into(), json!(chunk.to_string()));
                for part in 1..=size.div_ceil(chunk) {
                    header.insert(part.to_string(), json!(format!("{base}/lfs/objects/{oid}/parts/{part}")));
                }
                json!({ "href": format!("{base}/lfs/objects/{oid}/complete"), "header": header })
            }
            _ => json!({ "href": format!("{base}/lfs/objects/{oid}"), "header": {} }),
        };
        answers.push(json!({ "oid": oid, "size": size, "actions": { "upload": upload, "verify": verify } }));
    }
    let transfer = if multipart { "multipart" } else { "basic" };
    lfs_json(StatusCode::OK, &json!({ "transfer": transfer, "objects": answers, "hash_algo": "sha256" }))
}

async fn lfs_put(State(server): State<Arc<Server>>, UrlPath(oid): UrlPath<String>, body: Bytes) -> Response {
    if !valid_oid(&oid) {
        return bad_request(format!("`{oid}` is not a sha256"));
    }
    tokio::task::spawn_blocking(move || store_object(&server, &oid, &body)).await.unwrap_or_else(internal_error)
}

async fn lfs_put_part(
    State(server): State<Arc<Server>>,
    UrlPath((oid, part)): UrlPath<(String, u32)>,
    body: Bytes,
) -> Response {
    if !valid_oid(&oid) || part == 0 {
        return bad_request("bad oid or part number");
    }
    tokio::task::spawn_blocking(move || {
        let path = lfs_dir(&server.root).join("parts").join(&oid).join(part.to_string());
        if let Err(error) = write_whole(&server.root, &path, &body) {
            return internal_error(error);
        }
        server.lfs_parts_uploaded.fetch_add(1, Ordering::Relaxed);
        let mut response = Response::new(Body::empty());
        let etag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..32]);
        response.headers_mut().insert(ETAG, header(&etag));
        response
    })
    .await
    .unwrap_or_else(internal_error)
}

async fn lfs_complete(State(server): State<Arc<Server>>, UrlPath(oid): UrlPath<String>, body: Bytes) -> Response {
    if !valid_oid(&oid) {
        return bad_request(format!("`{oid}` is not a sha256"));
    }
    tokio::task::spawn_blocking(move || {
        let request = match parse_json(&body) {
            Ok(request) => request,
            Err(message) => return bad_request(message),
        };
        if request.get("oid").and_then(Value::as_str) != Some(oid.as_str()) {
            return bad_request("the completion names another oid");
        }
        let parts_dir = lfs_dir(&server.root).join("parts").join(&oid);
        let mut bytes = Vec::new();
        for (index, part) in request.get("parts").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let number = part.get("partNumber").and_then(Value::as_u64);
            if number != Some(index as u64 + 1) {
                return bad_request(format!("part {} is numbered {number:?}", index + 1));
            }
            let Ok(content) = std::fs::read(parts_dir.join((index + 1).to_string())) else {
                return bad_request(format!("part {} was not uploaded", index + 1));
            };
            let etag = format!("\"{}\"", &blake3::hash(&content).to_hex()[..32]);
            let sent = part.get("etag").and_then(Value::as_str).unwrap_or_default();
            if sent != etag && format!("\"{sent}\"") != etag {
                return bad_request(format!("part {}: etag {sent} does not match {etag}", index + 1));
            }
            bytes.extend_from_slice(&content);
        }
        let response = store_object(&server, &oid, &bytes);
        if response.status().is_success() {
            let _ = std::fs::remove_dir_all(&parts_dir);
        }
        response
    })
    .await
    .unwrap_or_else(internal_error)
}

async fn lfs_verify(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    if git_name(&name).is_none_or(|name| server.repo_dir(RepoKind::Dataset, &owner, name).is_none()) {
        return not_found("RepositoryNotFound", format!("Repository {owner}/{name} not found"));
    }
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let oid = request.get("oid").and_then(Value::as_str).unwrap_or_default();
    let size = request.get("size").and_then(Value::as_u64);
    if valid_oid(oid) && size.is_some() && stored_size(&server.root, oid) == size {
        lfs_json(StatusCode::OK, &json!({}))
    } else {
        lfs_json(StatusCode::NOT_FOUND, &json!({ "message": format!("object {oid} of {size:?} bytes not found") }))
    }
}

/// One checked line of a commit.
enum Change {
    Write { path: String, content: Vec<u8> },
    Copy { path: String, oid: String },
    Delete { path: String },
    DeleteFolder { path: String },
}

/// The changes of an ndjson commit body, all checked; the summary must be there.
fn parse_commit(root: &Path, body: &[u8]) -> Result<Vec<Change>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let mut changes = Vec::new();
    let mut has_header = false;
    for (index, line) in text.lines().filter(|line| !line.trim().is_empty()).enumerate() {
        let number = index + 1;
        let item: Value = serde_json::from_str(line).map_err(|e| format!("line {number} is not JSON: {e}"))?;
        let value = item.get("value").unwrap_or(&Value::Null);
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
        if number == 1 {
            if key != "header" || text("summary").is_none_or(|s| s.trim().is_empty()) {
                return Err("the first line must be the header, with a summary".into());
            }
            has_header = true;
            continue;
        }
        let path = text("path").ok_or_else(|| format!("line {number} has no path"))?;
        let plain = plain_relative(&path) || (key == "deletedFolder" && plain_relative(path.trim_end_matches('/')));
        if !plain || path.split('/').next() == Some(CONVERT_DIR) {
            return Err(format!("line {number}: `{path}` is not a plain relative path in the repo"));
        }
        changes.push(match key {
            "file" => {
                if text("encoding").as_deref() != Some("base64") {
                    return Err(format!("line {number}: only base64 encoding is served"));
                }
                let content = base64_decode(value.get("content").and_then(Value::as_str).unwrap_or_default())
                    .ok_or_else(|| format!("line {number}: the content is not base64"))?;
                Change::Write { path, content }
            }
            "lfsFile" => {
                let oid = text("oid").unwrap_or_default();
                if text("algo").as_deref() != Some("sha256") || !valid_oid(&oid) {
                    return Err(format!("line {number}: an LFS file needs algo sha256 and its oid"));
                }
                let size = value.get("size").and_then(Value::as_u64);
                if stored_size(root, &oid).is_none() || size.is_some_and(|s| stored_size(root, &oid) != Some(s)) {
                    return Err(format!("line {number}: LFS object {oid} of {path} was not uploaded"));
                }
                Change::Copy { path, oid }
            }
            "deletedFile" => Change::Delete { path },
            "deletedFolder" => Change::DeleteFolder { path: path.trim_end_matches('/').to_string() },
            other => return Err(format!("line {number}: unknown key `{other}`")),
        });
    }
    if !has_header {
        return Err("the body is empty".into());
    }
    Ok(changes)
}

/// Removes `path`'s empty parent folders, up to `dir`.
fn prune_empty_parents(dir: &Path, path: &Path) {
    let mut parent = path.parent();
    while let Some(folder) = parent.filter(|p| *p != dir && p.starts_with(dir)) {
        if std::fs::remove_dir(folder).is_err() {
            break;
        }
        parent = folder.parent();
    }
}

/// Applies checked changes to a repo's folder; the counts of files written and bytes received.
fn apply_commit(server: &Server, dir: &Path, changes: &[Change]) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for change in changes {
        match change {
            Change::Write { path, content } => {
                write_whole(&server.root, &dir.join(path), content)?;
                files += 1;
                bytes += content.len() as u64;
            }
            Change::Copy { path, oid } => {
                // Copied, not moved: the object stays for later commits of the same bytes.
                write_whole(&server.root, &dir.join(path), &std::fs::read(lfs_object(&server.root, oid))?)?;
                files += 1;
            }
            Change::Delete { path } => {
                std::fs::remove_file(dir.join(path))?;
                prune_empty_parents(dir, &dir.join(path));
            }
            Change::DeleteFolder { path } => {
                std::fs::remove_dir_all(dir.join(path))?;
                prune_empty_parents(dir, &dir.join(path));
            }
        }
    }
    Ok((files, bytes))
}

async fn commit(
    State(server): State<Arc<Server>>,
    UrlPath((owner, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = server.refuse(&headers) {
        return refused;
    }
    tokio::task::spawn_blocking(move || {
        let _one_at_a_time = server.commit_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (dir, _) = match main_branch(&server, &owner, &name, &revision) {
            Ok(found) => found,
            Err(response) => return *response,
        };
        let changes = match parse_commit(&server.root, &body) {
            Ok(changes) => changes,
            Err(message) => return bad_request(message),
        };
        for change in &changes {
            let missing = match change {
                Change::Delete { path } => !dir.join(path).is_file(),
                Change::DeleteFolder { path } => !dir.join(path).is_dir(),
                _ => false,
            };
            if let (true, Change::Delete { path } | Change::DeleteFolder { path }) = (missing, change) {
                return not_found("EntryNotFound", format!("{path} does not exist in {owner}/{name}"));
            }
        }
        let (files, bytes) = match apply_commit(&server, &dir, &changes) {
            Ok(counts) => counts,
            Err(error) => return internal_error(error),
        };
        if let Ok(mut etags) = server.etags.lock() {
            etags.retain(|path, _| !path.starts_with(&dir));
        }
        server.commits.fetch_add(1, Ordering::Relaxed);
        server.files_committed.fetch_add(files, Ordering::Relaxed);
        server.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        let commit = branch(RepoKind::Dataset, &dir, "main").map(|b| b.commit).unwrap_or_default();
        let commit_url = format!("{}/datasets/{owner}/{name}/commit/{commit}", server.base_url());
        json_response(
            StatusCode::OK,
            &json!({
                "success": true,
                "commitOid": commit,
                "commitUrl": commit_url,
                "hookOutput": "",
                "pullRequestUrl": null,
            }),
        )
    })
    .await
    .unwrap_or_else(internal_error)
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
        .route("/api/repos/create", post(create_repo))
        .route("/api/datasets/{owner}/{name}/preupload/{revision}", post(preupload))
        .route("/api/datasets/{owner}/{name}/commit/{revision}", post(commit))
        .route("/datasets/{owner}/{name}/info/lfs/objects/batch", post(lfs_batch))
        .route("/datasets/{owner}/{name}/info/lfs/objects/verify", post(lfs_verify))
        .route("/lfs/objects/{oid}", put(lfs_put))
        .route("/lfs/objects/{oid}/parts/{part}", put(lfs_put_part))
        .route("/lfs/objects/{oid}/complete", post(lfs_complete))
        // Commits carry whole files, base64-encoded.
        .layer(DefaultBodyLimit::max(1 << 30))
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
    let _ = server.base_url.set(format!("http://{local}"));
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
        repos_created: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        files_committed: AtomicU64::new(0),
        lfs_objects_uploaded: AtomicU64::new(0),
        lfs_parts_uploaded: AtomicU64::new(0),
        bytes_received: AtomicU64::new(0),
        token: args.token,
        lfs_chunk_size: args.lfs_chunk_size.filter(|&n| n > 0),
        base_url: OnceLock::new(),
        commit_lock: Mutex::new(()),
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
    fn base64_decodes() {
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm9vYmE").unwrap(), b"fooba");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn commits_are_checked_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        let header = r#"{"key":"header","value":{"summary":"s","description":""}}"#;
        let file =
            |path: &str| json!({ "key": "file", "value": { "content": "YQ==", "path": path, "encoding": "base64" } });
        let changes = parse_commit(root.path(), format!("{header}\n{}\n", file("a/b.txt")).as_bytes()).unwrap();
        assert!(matches!(&changes[..], [Change::Write { path, content }] if path == "a/b.txt" && content == b"a"));
        for bad in ["../x", "a/../../x", "/etc/x", ".convert-parquet/x", "a\\b", ""] {
            let body = format!("{header}\n{}\n", file(bad));
            assert!(parse_commit(root.path(), body.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_commit(root.path(), file("x").to_string().as_bytes()).is_err(), "no header");
        let lfs = format!(
            r#"{{"key":"lfsFile","value":{{"path":"x","algo":"sha256","oid":"{}","size":1}}}}"#,
            "a".repeat(64)
        );
        assert!(parse_commit(root.path(), format!("{header}\n{lfs}").as_bytes()).is_err(), "object not uploaded");
    }
}

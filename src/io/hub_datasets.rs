//! Hugging Face Hub datasets read in place: search the Hub, list a dataset's Parquet files (its own, else
//! the Hub's auto-converted `refs/convert/parquet` branch) and read chosen rows with HTTP range requests,
//! fetching the footer and only the pages that hold those rows, never whole files.
//!
//! Requests go through the shared [`HubClient`] ([`super::hub_client`]): settings follow `huggingface_hub`
//! (`HF_ENDPOINT`, `HF_TOKEN`, never logged or put in errors, and `HF_HUB_OFFLINE`, which fails every
//! call), and throttling (408, 429) and server errors (5xx) are retried under the shared
//! [`RetryPolicy`] (four attempts, 250 ms doubling up to 4 s, or what `Retry-After` asks within that).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use parquet::DecodeResult;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::push_decoder::{ParquetPushDecoderBuilder, RowGroupSelection};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataPushDecoder};
use reqwest::header::CONTENT_RANGE;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::task::JoinSet;

pub use super::hub_client::HubClient;
use super::hub_client::SendError;
/// How failed requests are retried: the shared policy ([`super::retry::RetryPolicy`]).
pub use super::retry::RetryPolicy;

use crate::models::local::sampler::Rng;

/// The branch where the Hub keeps Parquet conversions of datasets stored in other formats.
pub const CONVERT_REVISION: &str = "refs/convert/parquet";

/// Bytes read from the end of a file when opening it: footers of most files fit, saving a round trip.
const FOOTER_PREFETCH: u64 = 64 * 1024;

/// Requested ranges closer than this are fetched as one: a round trip costs more than a few KiB.
const COALESCE_GAP: u64 = 8 * 1024;

/// What went wrong talking to the Hub or reading its files. Messages name URLs but never the token.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("HF_HUB_OFFLINE is set, so the Hub at {endpoint} is not contacted ({action})")]
    Offline { endpoint: String, action: String },
    #[error("dataset `{dataset}`: not found on the Hub (HTTP 404{}) at {url}", code_suffix(.code))]
    NotFound { dataset: String, url: String, code: Option<String> },
    #[error("the Hub refused access to dataset `{dataset}`: HTTP {status} at {url} ({hint})")]
    Unauthorized { dataset: String, url: String, status: u16, hint: &'static str },
    #[error("HTTP {status} at {url} after {attempts} attempt(s): {message}")]
    Http { url: String, status: u16, attempts: u32, message: String },
    #[error("cannot reach {url} after {attempts} attempt(s): {message}")]
    Network { url: String, attempts: u32, message: String },
    #[error("unexpected answer from {url}: {message}")]
    BadResponse { url: String, message: String },
    #[error("dataset `{dataset}` has no Parquet files, neither its own nor on the `{CONVERT_REVISION}` branch")]
    NoParquet { dataset: String },
    #[error("`{0}` is not a dataset id (`owner/name`)")]
    BadId(String),
    #[error("bad Hub endpoint `{endpoint}`: {message}")]
    BadEndpoint { endpoint: String, message: String },
    #[error("cannot read Parquet file {path} of dataset `{dataset}`: {source}")]
    Parquet {
        dataset: String,
        path: String,
        #[source]
        source: ParquetError,
    },
    #[error("cannot assemble rows of dataset `{dataset}`: {source}")]
    Arrow {
        dataset: String,
        #[source]
        source: ArrowError,
    },
    #[error("rows to read must be increasing and below {num_rows} in {path}: got {row}")]
    BadRows { path: String, num_rows: u64, row: u64 },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("cannot run Hub requests: {0}")]
    Runtime(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|code| format!(" ({code})")).unwrap_or_default()
}

/// A dataset found by [`HubClient::search`].
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetInfo {
    pub id: String,
    pub sha: Option<String>,
    pub downloads: Option<u64>,
    pub likes: Option<u64>,
    pub tags: Vec<String>,
}

/// One Parquet file of a dataset, with the config and split its path places it in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParquetFile {
    pub dataset: String,
    pub config: String,
    pub split: String,
    pub path: String,
    /// The commit the listing saw when the Hub gave one (else the branch), so reads see the same files.
    pub revision: String,
}

/// A successful answer: its status (200 or 206), the `Content-Range` when partial, and the body.
struct Reply {
    status: StatusCode,
    content_range: Option<String>,
    body: Vec<u8>,
}

/// The dataset API, on the shared Hub client.
impl HubClient {
    /// Datasets whose id matches `query`, as the Hub ranks them, at most `limit`.
    pub async fn search(&self, query: &str, limit: usize) -> Result<Vec<DatasetInfo>, HubError> {
        let mut url = self.hub_url(&["api", "datasets"])?;
        url.query_pairs_mut().append_pair("search", query).append_pair("limit", &limit.to_string());
        let reply = self.get(&url, None, &format!("search `{query}`"), query).await?;
        let list = json_body(&url, &reply)?;
        let Some(items) = list.as_array() else {
            return Err(bad_response(&url, "the search answer is not a list"));
        };
        let count = |item: &Value, key: &str| item.get(key).and_then(Value::as_u64);
        Ok(items
            .iter()
            .filter_map(|item| {
                Some(DatasetInfo {
                    id: item.get("id")?.as_str()?.to_string(),
                    sha: item.get("sha").and_then(Value::as_str).map(str::to_string),
                    downloads: count(item, "downloads"),
                    likes: count(item, "likes"),
                    tags: item
                        .get("tags")
                        .and_then(Value::as_array)
                        .map(|tags| tags.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            })
            .take(limit)
            .collect())
    }

    /// The dataset's Parquet files, sorted by config, split and path: its own `*.parquet` files, else
    /// those of the `refs/convert/parquet` branch.
    pub async fn parquet_files(&self, dataset: &str) -> Result<Vec<ParquetFile>, HubError> {
        let id = dataset_segments(dataset)?;
        let url = self.hub_url(&[&["api", "datasets"], id.as_slice()].concat())?;
        let info = json_body(&url, &self.get(&url, None, &format!("list dataset `{dataset}`"), dataset).await?)?;
        let own = parquet_siblings(&info);
        let mut files: Vec<ParquetFile> = if !own.is_empty() {
            let revision = info.get("sha").and_then(Value::as_str).unwrap_or("main").to_string();
            own.iter()
                .map(|path| {
                    let (config, split) = own_layout(path);
                    ParquetFile {
                        dataset: dataset.to_string(),
                        config,
                        split,
                        path: path.clone(),
                        revision: revision.clone(),
                    }
                })
                .collect()
        } else {
            let url = self.hub_url(&[&["api", "datasets"], id.as_slice(), &["revision", CONVERT_REVISION]].concat())?;
            let info = match self.get(&url, None, &format!("list dataset `{dataset}`"), dataset).await {
                Ok(reply) => json_body(&url, &reply)?,
                Err(HubError::NotFound { .. }) => return Err(HubError::NoParquet { dataset: dataset.to_string() }),
                Err(error) => return Err(error),
            };
            let revision = info.get("sha").and_then(Value::as_str).unwrap_or(CONVERT_REVISION).to_string();
            let name = id.last().copied().unwrap_or_default();
            parquet_siblings(&info)
                .iter()
                .map(|path| {
                    let (config, split) = converted_layout(path, name);
                    ParquetFile {
                        dataset: dataset.to_string(),
                        config,
                        split,
                        path: path.clone(),
                        revision: revision.clone(),
                    }
                })
                .collect()
        };
        if files.is_empty() {
            return Err(HubError::NoParquet { dataset: dataset.to_string() });
        }
        files.sort();
        Ok(files)
    }

    /// Opens a remote Parquet file: one range request for the end of the file (two when its footer is
    /// larger than the prefetch), plus one for the offset index when it lies outside what was fetched.
    pub async fn open(&self, file: &ParquetFile) -> Result<RemoteParquet, HubError> {
        let id = dataset_segments(&file.dataset)?;
        let path: Vec<&str> = file.path.split('/').collect();
        let url =
            self.hub_url(&[&["datasets"], id.as_slice(), &["resolve", &file.revision], path.as_slice()].concat())?;
        let fetched = Arc::new(AtomicU64::new(0));
        let parquet_error =
            |source| HubError::Parquet { dataset: file.dataset.clone(), path: file.path.clone(), source };

        let what = format!("read {} of dataset `{}`", file.path, file.dataset);
        let tail = self.get(&url, Some(format!("bytes=-{FOOTER_PREFETCH}")), &what, &file.dataset).await?;
        fetched.fetch_add(tail.body.len() as u64, Ordering::Relaxed);
        let (start, len) = match &tail.content_range {
            Some(range) if tail.status == StatusCode::PARTIAL_CONTENT => {
                let (start, end, len) = parse_content_range(range).ok_or_else(|| {
                    bad_response(&url, &format!("unreadable Content-Range `{range}` for a suffix range"))
                })?;
                if end + 1 - start != tail.body.len() as u64 {
                    return Err(bad_response(&url, "the body length does not match Content-Range"));
                }
                (start, len)
            }
            // The server ignored the range and sent the whole file.
            _ => (0, tail.body.len() as u64),
        };
        let mut decoder = ParquetMetaDataPushDecoder::try_new(len)
            .map_err(parquet_error)?
            .with_column_index_policy(PageIndexPolicy::Skip)
            .with_offset_index_policy(PageIndexPolicy::Optional);
        let body_len = tail.body.len() as u64;
        decoder.push_range(start..start + body_len, tail.body.into()).map_err(parquet_error)?;
        let reader = RangeReader { client: self.clone(), url, dataset: file.dataset.clone(), what, fetched };
        let metadata = loop {
            match decoder.try_decode().map_err(parquet_error)? {
                DecodeResult::Data(metadata) => break metadata,
                DecodeResult::NeedsData(ranges) => {
                    let (ranges, data) = reader.fetch(&ranges).await?;
                    decoder.push_ranges(ranges, data.into_iter().map(Into::into).collect()).map_err(parquet_error)?;
                }
                DecodeResult::Finished => {
                    return Err(parquet_error(ParquetError::General("no metadata in the footer".into())));
                }
            }
        };
        let metadata =
            ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new()).map_err(parquet_error)?;
        let mut row_group_starts = Vec::with_capacity(metadata.metadata().num_row_groups() + 1);
        let mut rows = 0u64;
        row_group_starts.push(0);
        for row_group in metadata.metadata().row_groups() {
            rows += u64::try_from(row_group.num_rows()).unwrap_or(0);
            row_group_starts.push(rows);
        }
        Ok(RemoteParquet { file: file.clone(), len, metadata, row_group_starts, reader })
    }

    /// [`HubClient::url`], its error as a [`HubError`].
    fn hub_url(&self, segments: &[&str]) -> Result<Url, HubError> {
        self.url(segments).map_err(|message| HubError::BadEndpoint { endpoint: self.endpoint().to_string(), message })
    }

    /// GET with the shared retries. `what` says what the call was for (offline errors), `dataset` names the
    /// dataset (or query) in errors.
    async fn get(&self, url: &Url, range: Option<String>, what: &str, dataset: &str) -> Result<Reply, HubError> {
        let url_text = url.to_string();
        let reply = match self.get_bytes(url, range.as_deref()).await {
            Ok(reply) => reply,
            Err(SendError::Offline) => {
                return Err(HubError::Offline { endpoint: self.endpoint().to_string(), action: what.to_string() });
            }
            Err(SendError::Network { message, attempts }) => {
                return Err(HubError::Network { url: url_text, attempts, message });
            }
            Err(SendError::Runtime(message)) => return Err(HubError::Runtime(message)),
            Err(SendError::Status { reply, attempts, exhausted }) => {
                return Err(self.status_error(reply, url_text, dataset, if exhausted { attempts } else { 1 }));
            }
        };
        let content_range = reply.headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Reply { status: reply.status, content_range, body: reply.body })
    }

    /// The error for a failed answer: 404 and refused credentials by name, others with their status.
    fn status_error(&self, reply: super::hub_client::Reply, url: String, dataset: &str, attempts: u32) -> HubError {
        let status = reply.status.as_u16();
        let code = reply.headers.get("x-error-code").and_then(|v| v.to_str().ok()).map(str::to_string);
        match status {
            404 => HubError::NotFound { dataset: dataset.to_string(), url, code },
            401 | 403 => HubError::Unauthorized {
                dataset: dataset.to_string(),
                url,
                status,
                hint: match (self.has_token(), code.as_deref()) {
                    (_, Some("RepositoryNotFound")) => {
                        "it does not exist, or is private or gated: check the id and HF_TOKEN"
                    }
                    (true, _) => "the token in HF_TOKEN was not accepted",
                    (false, _) => "a gated or private dataset needs a token: set HF_TOKEN",
                },
            },
            _ => HubError::Http { url, status, attempts, message: self.scrub(&error_detail(&reply.body)) },
        }
    }
}

/// Fetches byte ranges of one remote file, counting what comes back.
#[derive(Clone)]
struct RangeReader {
    client: HubClient,
    url: Url,
    dataset: String,
    what: String,
    fetched: Arc<AtomicU64>,
}

impl RangeReader {
    /// The ranges, merged where they nearly touch and fetched concurrently: returns the merged ranges
    /// and their bytes (the decoders take a requested range out of any pushed range that holds it).
    async fn fetch(&self, ranges: &[Range<u64>]) -> Result<(Vec<Range<u64>>, Vec<Vec<u8>>), HubError> {
        let merged = coalesce(ranges, COALESCE_GAP);
        let mut tasks = JoinSet::new();
        for (i, range) in merged.iter().enumerate() {
            let reader = self.clone();
            let range = range.clone();
            tasks.spawn(async move { (i, reader.fetch_one(range).await) });
        }
        let mut data = vec![Vec::new(); merged.len()];
        let mut out_ranges = merged.clone();
        while let Some(joined) = tasks.join_next().await {
            let (i, fetched) = joined.map_err(|e| HubError::Runtime(e.to_string()))?;
            let (range, bytes) = fetched?;
            out_ranges[i] = range;
            data[i] = bytes;
        }
        Ok((out_ranges, data))
    }

    /// One range; a server that ignores ranges answers with the whole file, which is kept as such.
    async fn fetch_one(&self, range: Range<u64>) -> Result<(Range<u64>, Vec<u8>), HubError> {
        let header = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
        let reply = self.client.get(&self.url, Some(header), &self.what, &self.dataset).await?;
        self.fetched.fetch_add(reply.body.len() as u64, Ordering::Relaxed);
        let got = match (&reply.content_range, reply.status) {
            (Some(text), StatusCode::PARTIAL_CONTENT) => {
                let (start, end, _) = parse_content_range(text)
                    .ok_or_else(|| bad_response(&self.url, &format!("unreadable Content-Range `{text}`")))?;
                start..end + 1
            }
            _ => 0..reply.body.len() as u64,
        };
        if got.start > range.start || got.end < range.end || got.end - got.start != reply.body.len() as u64 {
            return Err(bad_response(
                &self.url,
                &format!("asked for bytes {}..{}, got {}..{}", range.start, range.end, got.start, got.end),
            ));
        }
        Ok((got, reply.body))
    }
}

/// A Parquet file on the Hub whose footer has been read; rows are fetched on demand.
pub struct RemoteParquet {
    file: ParquetFile,
    len: u64,
    metadata: ArrowReaderMetadata,
    /// First row of each row group, then the row count.
    row_group_starts: Vec<u64>,
    reader: RangeReader,
}

impl fmt::Debug for RemoteParquet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteParquet")
            .field("file", &self.file)
            .field("len", &self.len)
            .field("num_rows", &self.num_rows())
            .field("row_groups", &(self.row_group_starts.len() - 1))
            .finish()
    }
}

impl RemoteParquet {
    pub fn file(&self) -> &ParquetFile {
        &self.file
    }

    pub fn num_rows(&self) -> u64 {
        self.row_group_starts.last().copied().unwrap_or(0)
    }

    pub fn schema(&self) -> SchemaRef {
        self.metadata.schema().clone()
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn num_row_groups(&self) -> usize {
        self.row_group_starts.len() - 1
    }

    /// Body bytes received for this file so far (footer included).
    pub fn bytes_fetched(&self) -> u64 {
        self.reader.fetched.load(Ordering::Relaxed)
    }

    /// The rows at `indices` (strictly increasing) as one batch in that order. Only row groups holding
    /// some of them are read, and within those only the pages holding them when the file has an offset
    /// index (else whole column chunks). Row groups are fetched and decoded concurrently.
    pub async fn read_rows(&self, indices: &[u64]) -> Result<RecordBatch, HubError> {
        let num_rows = self.num_rows();
        let mut previous = None;
        for &row in indices {
            if row >= num_rows || previous.is_some_and(|p| row <= p) {
                return Err(HubError::BadRows { path: self.file.path.clone(), num_rows, row });
            }
            previous = Some(row);
        }
        let mut tasks = JoinSet::new();
        let mut rest = indices;
        let mut jobs = 0;
        while let Some(&first) = rest.first() {
            let group = self.row_group_starts.partition_point(|&start| start <= first) - 1;
            let (start, end) = (self.row_group_starts[group], self.row_group_starts[group + 1]);
            let count = rest.partition_point(|&row| row < end);
            let local: Vec<u64> = rest[..count].iter().map(|row| row - start).collect();
            rest = &rest[count..];
            let (metadata, reader, file) = (self.metadata.clone(), self.reader.clone(), self.file.clone());
            let job = jobs;
            jobs += 1;
            tasks.spawn(async move { (job, read_row_group(metadata, reader, &file, group, &local).await) });
        }
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); jobs];
        while let Some(joined) = tasks.join_next().await {
            let (job, batches) = joined.map_err(|e| HubError::Runtime(e.to_string()))?;
            parts[job] = batches?;
        }
        let batches: Vec<RecordBatch> = parts.into_iter().flatten().collect();
        arrow::compute::concat_batches(&self.schema(), &batches)
            .map_err(|source| HubError::Arrow { dataset: self.file.dataset.clone(), source })
    }
}

/// The rows at `local` (row-group-relative, increasing) of one row group.
async fn read_row_group(
    metadata: ArrowReaderMetadata,
    reader: RangeReader,
    file: &ParquetFile,
    group: usize,
    local: &[u64],
) -> Result<Vec<RecordBatch>, HubError> {
    let parquet_error = |source| HubError::Parquet { dataset: file.dataset.clone(), path: file.path.clone(), source };
    let mut decoder = ParquetPushDecoderBuilder::new_with_metadata(metadata)
        .with_batch_size(local.len().max(1))
        .with_row_group_selections(vec![RowGroupSelection::new(group, Some(selection(local)))])
        .build()
        .map_err(parquet_error)?;
    let mut batches = Vec::new();
    loop {
        match decoder.try_decode().map_err(parquet_error)? {
            DecodeResult::NeedsData(ranges) => {
                let (ranges, data) = reader.fetch(&ranges).await?;
                decoder.push_ranges(ranges, data.into_iter().map(Into::into).collect()).map_err(parquet_error)?;
            }
            DecodeResult::Data(batch) => batches.push(batch),
            DecodeResult::Finished => return Ok(batches),
        }
    }
}

/// Skip/select runs picking the increasing row numbers `rows`.
fn selection(rows: &[u64]) -> RowSelection {
    let mut selectors = Vec::new();
    let mut next = 0u64;
    let mut i = 0;
    while i < rows.len() {
        let mut run = 1;
        while i + run < rows.len() && rows[i + run] == rows[i] + run as u64 {
            run += 1;
        }
        if rows[i] > next {
            selectors.push(RowSelector::skip((rows[i] - next) as usize));
        }
        selectors.push(RowSelector::select(run));
        next = rows[i] + run as u64;
        i += run;
    }
    RowSelection::from(selectors)
}

/// Sorted, merged ranges: neighbours less than `gap` apart become one.
fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.end > r.start).cloned().collect();
    sorted.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last) if range.start < last.end.saturating_add(gap) => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// `bytes A-B/LEN` as `(A, B, LEN)`.
fn parse_content_range(text: &str) -> Option<(u64, u64, u64)> {
    let (range, len) = text.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, len) = (start.trim().parse().ok()?, end.trim().parse().ok()?, len.trim().parse().ok()?);
    (start <= end && end < len).then_some((start, end, len))
}

/// The parts of `owner/name` (or a legacy `name`), refusing anything that would change the URL's path.
fn dataset_segments(dataset: &str) -> Result<Vec<&str>, HubError> {
    let parts: Vec<&str> = dataset.split('/').collect();
    let plain = |part: &&str| !part.is_empty() && *part != "." && *part != ".." && !part.contains(['?', '#', '\\']);
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(HubError::BadId(dataset.to_string()));
    }
    Ok(parts)
}

fn json_body(url: &Url, reply: &Reply) -> Result<Value, HubError> {
    serde_json::from_slice(&reply.body).map_err(|e| bad_response(url, &format!("not JSON: {e}")))
}

fn bad_response(url: &Url, message: &str) -> HubError {
    HubError::BadResponse { url: url.to_string(), message: message.to_string() }
}

/// The `*.parquet` files among a repo's `siblings`.
fn parquet_siblings(info: &Value) -> Vec<String> {
    info.get("siblings")
        .and_then(Value::as_array)
        .map(|siblings| {
            siblings
                .iter()
                .filter_map(|s| s.get("rfilename").and_then(Value::as_str))
                .filter(|path| path.to_ascii_lowercase().ends_with(".parquet"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The split a name stands for, by the Hub's keywords for file names (`dev` is validation, ...).
fn split_keyword(word: &str) -> Option<&'static str> {
    match word.to_ascii_lowercase().as_str() {
        "train" | "training" => Some("train"),
        "validation" | "valid" | "val" | "dev" => Some("validation"),
        "test" | "testing" | "eval" | "evaluation" => Some("test"),
        _ => None,
    }
}

/// Config and split of a dataset's own file, as the Hub infers them without a `configs:` section:
/// the split from a keyword in the file name (last word first), else in its folders (deepest first),
/// else `train`; the config from the deepest folder that is neither `data` nor a split, else `default`.
fn own_layout(path: &str) -> (String, String) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    let split = stem
        .split(|c: char| !c.is_ascii_alphanumeric())
        .rev()
        .find_map(split_keyword)
        .or_else(|| parts.iter().rev().find_map(|dir| split_keyword(dir)))
        .unwrap_or("train");
    let config = parts.iter().rev().find(|dir| **dir != "data" && split_keyword(dir).is_none()).unwrap_or(&"default");
    (config.to_string(), split.to_string())
}

/// Config and split of a file on the convert branch: `{config}/{split}/NNNN.parquet` (`partial-{split}`
/// when the Hub converted only the start of a big split), or the older `{config}/{name}-{split}.parquet`
/// (with `-NNNNN-of-NNNNN` when sharded).
fn converted_layout(path: &str, name: &str) -> (String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [config, split, _file] => (config.to_string(), split.strip_prefix("partial-").unwrap_or(split).to_string()),
        [config, file] => {
            let stem = file.rsplit_once('.').map_or(*file, |(stem, _)| stem);
            let stem = strip_shard_suffix(stem);
            let split = stem.strip_prefix(name).and_then(|s| s.strip_prefix('-')).filter(|s| !s.is_empty());
            let split = split.unwrap_or_else(|| stem.rsplit_once('-').map_or(stem, |(_, split)| split));
            (config.to_string(), split.to_string())
        }
        _ => own_layout(path),
    }
}

/// `x-00000-of-00002` → `x`.
fn strip_shard_suffix(stem: &str) -> &str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((head, total)) = stem.rsplit_once("-of-")
        && digits(total)
        && let Some((base, index)) = head.rsplit_once('-')
        && digits(index)
    {
        return base;
    }
    stem
}

/// The message of a Hub error body (`{"error": ...}`), or the start of the body.
fn error_detail(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(message) = value.get("error").and_then(Value::as_str)
    {
        return message.to_string();
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// How rows are drawn by [`sample_rows_with`].
#[derive(Clone, Debug, Default)]
pub struct SampleOptions {
    /// At most this many rows from any one dataset; the rest go to the others.
    pub per_dataset: Option<usize>,
    /// Only these splits (e.g. `["train"]`); all when `None`.
    pub splits: Option<Vec<String>>,
}

/// Where a sampled row comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowOrigin {
    /// The file, relative to the repo at the group's revision.
    pub path: String,
    /// Row number within the split, counting through the split's files in path order.
    pub row: u64,
    /// Row number within the file.
    pub row_in_file: u64,
}

/// Sampled rows of one split of one dataset config: the dataset's own columns, one origin per row.
#[derive(Clone, Debug)]
pub struct SampledGroup {
    pub dataset: String,
    pub revision: String,
    pub config: String,
    pub split: String,
    pub batch: RecordBatch,
    pub origins: Vec<RowOrigin>,
}

/// What [`sample_rows`] returns: one group per (dataset, config, split) with rows, datasets in the
/// order asked, then by config and split; rows in split order.
#[derive(Clone, Debug, Default)]
pub struct SampledRows {
    pub groups: Vec<SampledGroup>,
    /// Body bytes received from the Hub for the files, footers included.
    pub bytes_fetched: u64,
}

impl SampledRows {
    /// Rows in all groups.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.batch.num_rows()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Draws `n` rows without replacement from `datasets`, reproducibly for a `seed`. See
/// [`sample_rows_with`].
pub async fn sample_rows(
    client: &HubClient,
    datasets: &[String],
    n: usize,
    seed: u64,
) -> Result<SampledRows, HubError> {
    sample_rows_with(client, datasets, n, seed, &SampleOptions::default()).await
}

/// Draws `n` rows without replacement. Datasets get shares proportional to their row counts (exact
/// shares, largest remainders first), capped by `per_dataset` and by their size, a capped dataset's
/// surplus going to the others; fewer than `n` come back only when all datasets run out. Within a
/// dataset, rows are drawn uniformly over all its selected files, concatenated. A dataset's draw
/// depends on the seed, its id and its share only. Every file's footer is read (for row counts);
/// row data only where rows were drawn.
pub async fn sample_rows_with(
    client: &HubClient,
    datasets: &[String],
    n: usize,
    seed: u64,
    options: &SampleOptions,
) -> Result<SampledRows, HubError> {
    let mut seen = HashSet::new();
    let datasets: Vec<&String> = datasets.iter().filter(|d| seen.insert(d.as_str())).collect();

    // Every file of every dataset, opened concurrently (the client bounds requests in flight).
    let mut listed: Vec<Vec<ParquetFile>> = Vec::with_capacity(datasets.len());
    for dataset in &datasets {
        let mut files = client.parquet_files(dataset).await?;
        if let Some(splits) = &options.splits {
            files.retain(|f| splits.contains(&f.split));
        }
        listed.push(files);
    }
    let mut tasks = JoinSet::new();
    for (d, files) in listed.iter().enumerate() {
        for (f, file) in files.iter().enumerate() {
            let (client, file) = (client.clone(), file.clone());
            tasks.spawn(async move { (d, f, client.open(&file).await) });
        }
    }
    let mut opened: Vec<Vec<Option<RemoteParquet>>> =
        listed.iter().map(|files| files.iter().map(|_| None).collect()).collect();
    while let Some(joined) = tasks.join_next().await {
        let (d, f, remote) = joined.map_err(|e| HubError::Runtime(e.to_string()))?;
        opened[d][f] = Some(remote?);
    }
    let opened: Vec<Vec<RemoteParquet>> =
        opened.into_iter().map(|files| files.into_iter().flatten().collect()).collect();

    let sizes: Vec<u64> = opened.iter().map(|files| files.iter().map(RemoteParquet::num_rows).sum()).collect();
    let shares = allocate(n as u64, &sizes, options.per_dataset.map(|cap| cap as u64));

    // Draw, then read each file's rows concurrently.
    let mut reads = JoinSet::new();
    let mut plans: Vec<Vec<(usize, Vec<u64>)>> = Vec::with_capacity(opened.len());
    let opened: Vec<Arc<Vec<RemoteParquet>>> = opened.into_iter().map(Arc::new).collect();
    for (d, files) in opened.iter().enumerate() {
        let rows = draw(sizes[d], shares[d], seed ^ fnv1a(datasets[d].as_bytes()));
        let mut plan = Vec::new();
        let mut rest = rows.as_slice();
        let mut start = 0u64;
        for (f, file) in files.iter().enumerate() {
            let end = start + file.num_rows();
            let count = rest.partition_point(|&row| row < end);
            if count > 0 {
                let local: Vec<u64> = rest[..count].iter().map(|row| row - start).collect();
                let files = files.clone();
                let rows = local.clone();
                reads.spawn(async move { (d, f, files[f].read_rows(&rows).await) });
                plan.push((f, local));
            }
            rest = &rest[count..];
            start = end;
        }
        plans.push(plan);
    }
    let mut batches: BTreeMap<(usize, usize), RecordBatch> = BTreeMap::new();
    while let Some(joined) = reads.join_next().await {
        let (d, f, batch) = joined.map_err(|e| HubError::Runtime(e.to_string()))?;
        batches.insert((d, f), batch?);
    }

    let mut out = SampledRows::default();
    for (d, files) in opened.iter().enumerate() {
        // Files are sorted by (config, split, path), so each split's files are adjacent.
        let mut split_start = 0u64;
        let mut group: Option<(SampledGroup, Vec<RecordBatch>)> = None;
        let mut planned = plans[d].iter().peekable();
        for (f, file) in files.iter().enumerate() {
            let info = file.file();
            let same_split = group.as_ref().is_some_and(|(g, _)| (&g.config, &g.split) == (&info.config, &info.split));
            if !same_split {
                finish_group(group.take(), &mut out)?;
                split_start = 0;
                group = Some((
                    SampledGroup {
                        dataset: info.dataset.clone(),
                        revision: info.revision.clone(),
                        config: info.config.clone(),
                        split: info.split.clone(),
                        batch: RecordBatch::new_empty(file.schema()),
                        origins: Vec::new(),
                    },
                    Vec::new(),
                ));
            }
            if let Some((_, local)) = planned.next_if(|(planned_file, _)| *planned_file == f)
                && let Some((g, parts)) = group.as_mut()
                && let Some(batch) = batches.remove(&(d, f))
            {
                g.origins.extend(local.iter().map(|&row_in_file| RowOrigin {
                    path: info.path.clone(),
                    row: split_start + row_in_file,
                    row_in_file,
                }));
                parts.push(batch);
            }
            split_start += file.num_rows();
        }
        finish_group(group.take(), &mut out)?;
        out.bytes_fetched += files.iter().map(RemoteParquet::bytes_fetched).sum::<u64>();
    }
    Ok(out)
}

/// Concatenates a group's batches into it and keeps it when it has rows.
fn finish_group(group: Option<(SampledGroup, Vec<RecordBatch>)>, out: &mut SampledRows) -> Result<(), HubError> {
    let Some((mut group, parts)) = group else { return Ok(()) };
    if parts.is_empty() {
        return Ok(());
    }
    let schema = parts[0].schema();
    group.batch = arrow::compute::concat_batches(&schema, &parts)
        .map_err(|source| HubError::Arrow { dataset: group.dataset.clone(), source })?;
    out.groups.push(group);
    Ok(())
}

/// Shares of `n` proportional to `sizes`, each at most `min(size, cap)`: saturated datasets take their
/// limit and leave the proportional split of the rest to the others (largest remainder, then order).
fn allocate(n: u64, sizes: &[u64], cap: Option<u64>) -> Vec<u64> {
    let limits: Vec<u64> = sizes.iter().map(|&s| cap.map_or(s, |c| s.min(c))).collect();
    if limits.iter().sum::<u64>() <= n {
        return limits;
    }
    let mut shares = vec![0u64; sizes.len()];
    let mut active: Vec<usize> = (0..sizes.len()).filter(|&i| limits[i] > 0).collect();
    let mut remaining = n;
    loop {
        let total: u128 = active.iter().map(|&i| sizes[i] as u128).sum();
        let saturated: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&i| limits[i] as u128 * total <= remaining as u128 * sizes[i] as u128)
            .collect();
        if saturated.is_empty() {
            break;
        }
        for &i in &saturated {
            shares[i] = limits[i];
            remaining -= limits[i];
        }
        active.retain(|i| !saturated.contains(i));
    }
    let total: u128 = active.iter().map(|&i| sizes[i] as u128).sum();
    if total == 0 {
        return shares;
    }
    let mut remainders = Vec::with_capacity(active.len());
    let mut given = 0u64;
    for &i in &active {
        let exact = remaining as u128 * sizes[i] as u128;
        shares[i] = (exact / total) as u64;
        given += shares[i];
        remainders.push((exact % total, i));
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((remaining - given) as usize) {
        shares[i] += 1;
    }
    shares
}

/// `k` distinct numbers below `n`, uniformly, sorted. A partial Fisher-Yates shuffle over a virtual array, so a
/// larger `k` with the same seed draws a superset: asking for more rows later keeps (and reuses the model
/// calls of) every row drawn before.
fn draw(n: u64, k: u64, seed: u64) -> Vec<u64> {
    let k = k.min(n);
    let mut rng = Rng::new(seed);
    // Only the swapped positions are stored: memory follows k, not n.
    let mut swapped: HashMap<u64, u64> = HashMap::with_capacity(k as usize * 2);
    let mut rows = Vec::with_capacity(k as usize);
    for i in 0..k {
        // Multiply-shift maps 64 random bits onto 0..n-i with negligible bias.
        let j = i + ((rng.next_u64() as u128 * u128::from(n - i)) >> 64) as u64;
        let at_j = swapped.get(&j).copied().unwrap_or(j);
        let at_i = swapped.get(&i).copied().unwrap_or(i);
        swapped.insert(j, at_i);
        rows.push(at_j);
    }
    rows.sort_unstable();
    rows
}

/// A stable 64-bit hash (FNV-1a), so a dataset's seed does not depend on the process.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Runs a Hub future to completion on a private runtime, for callers without one.
pub fn block_on<T>(future: impl Future<Output = Result<T, HubError>>) -> Result<T, HubError> {
    on_private_runtime(future, "block_on called inside a tokio runtime: await the future instead", HubError::Runtime)
}

/// Runs `future` on a private current-thread runtime. Inside a runtime that would deadlock or panic, so the
/// caller gets `runtime_error(inside)` instead.
pub(crate) fn on_private_runtime<T, E>(
    future: impl Future<Output = Result<T, E>>,
    inside: &str,
    runtime_error: impl Fn(String) -> E,
) -> Result<T, E> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(runtime_error(inside.to_string()));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| runtime_error(e.to_string()))?
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_layouts() {
        let layout = |path: &str| {
            let (config, split) = own_layout(path);
            format!("{config}/{split}")
        };
        assert_eq!(layout("data/train-00000-of-00002.parquet"), "default/train");
        assert_eq!(layout("data/validation-00000-of-00001.parquet"), "default/validation");
        assert_eq!(layout("test.parquet"), "default/test");
        assert_eq!(layout("dev.parquet"), "default/validation");
        assert_eq!(layout("en/train/0000.parquet"), "en/train");
        assert_eq!(layout("fr/test-00000-of-00001.parquet"), "fr/test");
        assert_eq!(layout("data/en/valid.parquet"), "en/validation");
        assert_eq!(layout("shard_3.parquet"), "default/train");
    }

    #[test]
    fn converted_layouts() {
        assert_eq!(converted_layout("default/train/0000.parquet", "x"), ("default".into(), "train".into()));
        assert_eq!(converted_layout("en/partial-train/0003.parquet", "x"), ("en".into(), "train".into()));
        assert_eq!(converted_layout("en/unsupervised/0000.parquet", "x"), ("en".into(), "unsupervised".into()));
        assert_eq!(converted_layout("plain_text/my-set-test.parquet", "my-set"), ("plain_text".into(), "test".into()));
        assert_eq!(
            converted_layout("plain_text/my-set-train-00001-of-00004.parquet", "my-set"),
            ("plain_text".into(), "train".into())
        );
        assert_eq!(converted_layout("c/other-validation.parquet", "my-set"), ("c".into(), "validation".into()));
    }

    #[test]
    fn selections_pick_the_rows() {
        let selection = selection(&[0, 1, 2, 5, 9, 10]);
        let selectors: Vec<RowSelector> = selection.into();
        assert_eq!(
            selectors,
            [
                RowSelector::select(3),
                RowSelector::skip(2),
                RowSelector::select(1),
                RowSelector::skip(3),
                RowSelector::select(2)
            ]
        );
    }

    #[test]
    fn ranges_coalesce() {
        assert_eq!(coalesce(&[10..20, 0..5, 24..30, 100..110, 7..7], 5), [0..5, 10..30, 100..110]);
        assert_eq!(coalesce(&[0..10, 5..8, 20..30], 0), [0..10, 20..30]);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes 5-4/100"), None);
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
    }

    #[test]
    fn shares_are_proportional_and_capped() {
        assert_eq!(allocate(10, &[100, 300], None), [3, 7]);
        assert_eq!(allocate(10, &[100, 100, 100], None), [4, 3, 3]);
        assert_eq!(allocate(10, &[2, 1000], None), [0, 10]);
        assert_eq!(allocate(10, &[1000, 1000], Some(3)), [3, 3]);
        assert_eq!(allocate(10, &[1000, 10, 1000], Some(4)), [4, 2, 4]);
        assert_eq!(allocate(10, &[1000, 5], Some(8)), [8, 2]);
        assert_eq!(allocate(10, &[3, 4], None), [3, 4]);
        assert_eq!(allocate(10, &[0, 0], None), [0, 0]);
        for n in 0..50 {
            let shares = allocate(n, &[17, 5, 40], Some(20));
            assert_eq!(shares.iter().sum::<u64>(), n.min(17 + 5 + 20), "{n}: {shares:?}");
        }
    }

    #[test]
    fn draws_are_distinct_sorted_and_seeded() {
        let rows = draw(1000, 100, 7);
        assert_eq!(rows.len(), 100);
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
        assert!(rows.iter().all(|&r| r < 1000));
        assert_eq!(rows, draw(1000, 100, 7));
        assert_ne!(rows, draw(1000, 100, 8));
        assert_eq!(draw(5, 10, 1), [0, 1, 2, 3, 4]);
        let small: HashSet<u64> = draw(1000, 50, 7).into_iter().collect();
        let large: HashSet<u64> = draw(1000, 80, 7).into_iter().collect();
        assert!(small.is_subset(&large), "more rows with the same seed extend the draw");
        assert!(draw(0, 3, 1).is_empty());
    }

    #[test]
    fn settings_come_from_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let client = HubClient::from_lookup(vars(&[]));
        assert_eq!(client.endpoint(), "https://huggingface.co");
        let client = HubClient::from_lookup(vars(&[("HF_ENDPOINT", "http://127.0.0.1:9/"), ("HF_TOKEN", "hf_secret")]));
        assert_eq!(client.endpoint(), "http://127.0.0.1:9");
        assert!(!format!("{client:?}").contains("hf_secret"));

        let client = HubClient::from_lookup(vars(&[("HF_HUB_OFFLINE", "1"), ("HF_TOKEN", "hf_secret")]));
        let error = block_on(client.search("anything", 3)).unwrap_err().to_string();
        assert!(error.contains("HF_HUB_OFFLINE"), "{error}");
        let file = ParquetFile {
            dataset: "a/b".into(),
            config: "default".into(),
            split: "train".into(),
            path: "x.parquet".into(),
            revision: "main".into(),
        };
        let error = block_on(client.open(&file)).unwrap_err().to_string();
        assert!(error.contains("HF_HUB_OFFLINE") && !error.contains("hf_secret"), "{error}");
    }

    #[test]
    fn urls_encode_revisions_and_refuse_odd_ids() {
        let client = HubClient::with_endpoint("http://hub.test/mirror/", None);
        let url = client.url(&["datasets", "a", "b", "resolve", CONVERT_REVISION, "default", "train", "0000.parquet"]);
        assert_eq!(
            url.unwrap().as_str(),
            "http://hub.test/mirror/datasets/a/b/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet"
        );
        assert!(dataset_segments("a/b").is_ok());
        assert!(dataset_segments("squad").is_ok());
        for bad in ["a/../b", "a/b/c", "", "a//b", "a/b?x"] {
            assert!(matches!(dataset_segments(bad), Err(HubError::BadId(_))), "{bad}");
        }
    }
}

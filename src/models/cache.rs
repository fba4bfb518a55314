//! Content-addressed response cache in an embedded database (redb), shared across runs and graphs.
//!
//! The key is a hash of the canonical request (model name, prompt, sampling); the API key and the host
//! are not part of it, so a re-run, or another graph asking the same thing, is answered without a call.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sdg_operators::model::{ModelReply, Prompt, Sampling};

const RESPONSES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("responses");

#[derive(Debug, thiserror::Error)]
#[error("response cache {path}: {message}")]
pub struct CacheError {
    pub path: PathBuf,
    pub message: String,
}

enum OpenError {
    /// Another process holds the database.
    Locked,
    Failed(CacheError),
}

/// The cache key of a request.
pub fn key(model: &str, prompt: &Prompt, sampling: &Sampling) -> [u8; 32] {
    // serde_json of these types is canonical: fixed field order, no maps with random order.
    let canonical = serde_json::json!({"model": model, "prompt": prompt, "sampling": sampling});
    *blake3::hash(canonical.to_string().as_bytes()).as_bytes()
}

pub struct ResponseCache {
    path: PathBuf,
    db: Database,
    /// Inserts are batched: one write transaction (and fsync) per flush, not per response. Until then each
    /// reply is in the write-ahead log, so a process killed between flushes loses none of them.
    pending: Mutex<Pending>,
}

struct Pending {
    replies: Vec<([u8; 32], Vec<u8>)>,
    /// Appended with one `write` per reply: the page cache keeps it through a SIGKILL of this process.
    wal: Option<File>,
}

/// Replies queued before a flush.
const FLUSH_EVERY: usize = 512;

/// Shards a process may fall back to while another process holds the cache.
const MAX_SHARDS: usize = 32;

/// `responses.redb` -> `responses.<n>.redb`.
fn shard_path(path: &Path, n: usize) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let extension = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}.{n}{extension}"))
}

impl ResponseCache {
    /// Opens the cache at `path`. redb lets one process hold a database; while another run holds it, this
    /// one writes to a shard beside it (`responses.1.redb`, ...), which the next process that opens the
    /// main file folds in, so concurrent runs work and no answer is lost to the cache.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        match Self::open_file(path) {
            Ok(cache) => {
                cache.fold_shards();
                Ok(cache)
            }
            Err(OpenError::Locked) => {
                for n in 1..=MAX_SHARDS {
                    match Self::open_file(&shard_path(path, n)) {
                        Ok(cache) => {
                            tracing::warn!(
                                "the response cache {} is in use by another run; this run caches into {} \
                                 (merged into the main cache by a later run)",
                                path.display(),
                                cache.path.display()
                            );
                            return Ok(cache);
                        }
                        Err(OpenError::Locked) => continue,
                        Err(OpenError::Failed(error)) => return Err(error),
                    }
                }
                Err(CacheError { path: path.to_path_buf(), message: "the cache and all its shards are in use".into() })
            }
            Err(OpenError::Failed(error)) => Err(error),
        }
    }

    /// Moves the answers of shards no process holds into this (main) cache and deletes the shards.
    fn fold_shards(&self) {
        for n in 1..=MAX_SHARDS {
            let shard_file = shard_path(&self.path, n);
            if !shard_file.exists() {
                continue;
            }
            let shard = match Self::open_file(&shard_file) {
                Ok(shard) => shard,
                Err(_) => continue,
            };
            let moved = (|| -> Result<usize, String> {
                let read = shard.db.begin_read().map_err(|e| e.to_string())?;
                let Ok(table) = read.open_table(RESPONSES) else { return Ok(0) };
                let write = self.db.begin_write().map_err(|e| e.to_string())?;
                let mut count = 0;
                {
                    let mut into = write.open_table(RESPONSES).map_err(|e| e.to_string())?;
                    for entry in table.iter().map_err(|e| e.to_string())? {
                        let (key, value) = entry.map_err(|e| e.to_string())?;
                        into.insert(key.value(), value.value()).map_err(|e| e.to_string())?;
                        count += 1;
                    }
                }
                write.commit().map_err(|e| e.to_string())?;
                Ok(count)
            })();
            drop(shard);
            match moved {
                Ok(count) => {
                    tracing::info!(count, shard = %shard_file.display(), "folded a response cache shard");
                    let _ = std::fs::remove_file(wal_path(&shard_file));
                    let _ = std::fs::remove_file(&shard_file);
                }
                Err(error) => tracing::warn!(%error, shard = %shard_file.display(), "could not fold a cache shard"),
            }
        }
    }

    fn open_file(path: &Path) -> Result<Self, OpenError> {
        let fail = |message: String| OpenError::Failed(CacheError { path: path.to_path_buf(), message });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::Locked),
            Err(e) => return Err(fail(e.to_string())),
        };
        // The database is open (and locked) by us: replies a killed process left in the log go in first.
        let wal_path = wal_path(path);
        let replayed = match std::fs::read(&wal_path) {
            Ok(bytes) => read_wal(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(fail(format!("cannot read {}: {e}", wal_path.display()))),
        };
        let cache = ResponseCache {
            path: path.to_path_buf(),
            db,
            pending: Mutex::new(Pending { replies: replayed, wal: None }),
        };
        cache.flush().map_err(OpenError::Failed)?;
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", wal_path.display())))?;
        if let Ok(mut pending) = cache.pending.lock() {
            pending.wal = Some(wal);
        }
        Ok(cache)
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<ModelReply> {
        if let Ok(pending) = self.pending.lock()
            && let Some((_, bytes)) = pending.replies.iter().rev().find(|(k, _)| k == key)
        {
            return serde_json::from_slice(bytes).ok();
        }
        let read = self.db.begin_read().ok()?;
        let table = read.open_table(RESPONSES).ok()?;
        let value = table.get(key).ok()??;
        serde_json::from_slice(value.value()).ok()
    }

    /// Logs a reply at once (durable through a crash of this process) and queues it for the database.
    pub fn put(&self, key: [u8; 32], reply: &ModelReply) {
        let Ok(bytes) = serde_json::to_vec(reply) else { return };
        let full = match self.pending.lock() {
            Ok(mut pending) => {
                if let Some(wal) = pending.wal.as_mut()
                    && let Err(error) = wal.write_all(&wal_record(&key, &bytes))
                {
                    tracing::warn!(%error, "could not append to the response cache log");
                }
                pending.replies.push((key, bytes));
                pending.replies.len() >= FLUSH_EVERY
            }
            Err(_) => false,
        };
        if full && let Err(error) = self.flush() {
            tracing::warn!(%error, "could not write the response cache");
        }
    }

    /// Writes queued replies in one transaction, then empties the log. The lock is held throughout, so a
    /// reply logged meanwhile cannot be truncated away before it is in the database.
    pub fn flush(&self) -> Result<(), CacheError> {
        let Ok(mut pending) = self.pending.lock() else { return Ok(()) };
        if pending.replies.is_empty() {
            return Ok(());
        }
        let fail = |message: String| CacheError { path: self.path.clone(), message };
        let write = self.db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            let mut table = write.open_table(RESPONSES).map_err(|e| fail(e.to_string()))?;
            for (key, bytes) in &pending.replies {
                table.insert(key, bytes.as_slice()).map_err(|e| fail(e.to_string()))?;
            }
        }
        write.commit().map_err(|e| fail(e.to_string()))?;
        pending.replies.clear();
        let truncated = match pending.wal.as_mut() {
            Some(wal) => wal.set_len(0),
            None => OpenOptions::new().write(true).open(wal_path(&self.path)).and_then(|f| f.set_len(0)),
        };
        match truncated {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // Harmless: the records are in the database now and would only be inserted again.
            Err(error) => {
                tracing::warn!(%error, "could not empty the response cache log");
                Ok(())
            }
        }
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".wal");
    db.with_file_name(name)
}

/// A log record: payload length (u32 LE), key, payload, and an 8-byte checksum of key and payload, so a
/// record torn by a crash is recognised and dropped.
fn wal_record(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(4 + 32 + payload.len() + 8);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(key);
    record.extend_from_slice(payload);
    record.extend_from_slice(&checksum(key, payload));
    record
}

fn checksum(key: &[u8; 32], payload: &[u8]) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    sum
}

/// The complete records of a log, up to the first torn or corrupt one.
fn read_wal(mut bytes: &[u8]) -> Vec<([u8; 32], Vec<u8>)> {
    let mut records = Vec::new();
    while bytes.len() >= 4 + 32 + 8 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(total) = len.checked_add(4 + 32 + 8).filter(|&t| t <= bytes.len()) else { break };
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[4..36]);
        let payload = &bytes[36..36 + len];
        if bytes[36 + len..total] != checksum(&key, payload) {
            break;
        }
        records.push((key, payload.to_vec()));
        bytes = &bytes[total..];
    }
    records
}

impl Drop for ResponseCache {
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::warn!(%error, "could not write the response cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdg_operators::model::{ChatMessage, Usage};

    fn reply(text: &str) -> ModelReply {
        ModelReply {
            texts: vec![text.into()],
            embeddings: vec![],
            model: "m".into(),
            usage: Usage { prompt_tokens: 3, completion_tokens: 2 },
            latency_ms: 5.0,
            cached: false,
        }
    }

    #[test]
    fn replies_survive_reopening_and_keys_depend_on_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let prompt = Prompt::Chat(vec![ChatMessage::new("user", "hi")]);
        let sampling = Sampling { n: 1, temperature: Some(0.7), ..Default::default() };
        let k = key("m", &prompt, &sampling);
        assert_ne!(k, key("other", &prompt, &sampling));
        assert_ne!(k, key("m", &prompt, &Sampling { seed: Some(1), ..sampling.clone() }));
        {
            let cache = ResponseCache::open(&path).unwrap();
            cache.put(k, &reply("hello"));
            assert_eq!(cache.get(&k).unwrap().texts, vec!["hello"], "visible before flush");
        }
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(cache.get(&k).unwrap(), reply("hello"));
        assert!(cache.get(&[0; 32]).is_none());
    }

    #[test]
    fn a_second_holder_writes_a_shard_that_the_next_open_folds_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("responses.redb");
        let (first, second) = ([1u8; 32], [2u8; 32]);
        let main = ResponseCache::open(&path).unwrap();
        main.put(first, &reply("main"));
        {
            // The main file is held: this one becomes shard 1 (its own WAL, its own database).
            let shard = ResponseCache::open(&path).unwrap();
            assert_eq!(shard.path, dir.path().join("responses.1.redb"));
            shard.put(second, &reply("shard"));
            assert!(shard.get(&first).is_none(), "a shard starts empty");
        }
        assert!(main.get(&second).is_none());
        drop(main);
        let reopened = ResponseCache::open(&path).unwrap();
        assert_eq!(reopened.get(&first).unwrap().texts, vec!["main"]);
        assert_eq!(reopened.get(&second).unwrap().texts, vec!["shard"], "the shard was folded in");
        assert!(!dir.path().join("responses.1.redb").exists() && !dir.path().join("responses.1.redb.wal").exists());
    }

    #[test]
    fn replies_of_a_killed_process_are_replayed_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let prompt = Prompt::Chat(vec![ChatMessage::new("user", "hi")]);
        let keys: Vec<[u8; 32]> =
            (0..3).map(|seed| key("m", &prompt, &Sampling { seed: Some(seed), ..Default::default() })).collect();
        {
            let cache = ResponseCache::open(&path).unwrap();
            for (i, k) in keys.iter().enumerate() {
                cache.put(*k, &reply(&format!("answer {i}")));
            }
            // A SIGKILL: no flush, no drop.
            std::mem::forget(cache);
        }
        let log = wal_path(&path);
        assert!(std::fs::metadata(&log).unwrap().len() > 0);
        // A crash can tear the last record: it is dropped, the others are kept.
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&wal_record(&[7; 32], b"{\"texts\":")[..20]);
        std::fs::write(&log, &bytes).unwrap();
        // The forgotten handle still locks the database in this process; a dead process would not. Open a copy
        // of what it left on disk.
        let copy = dir.path().join("copy.redb");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(&log, wal_path(&copy)).unwrap();
        let cache = ResponseCache::open(&copy).unwrap();
        assert_eq!(std::fs::metadata(wal_path(&copy)).unwrap().len(), 0, "replayed into the database");
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(cache.get(k).unwrap().texts, vec![format!("answer {i}")]);
        }
        assert!(cache.get(&[7; 32]).is_none(), "the torn record is not a reply");
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let mut bytes = wal_record(&[1; 32], b"one");
        bytes.extend(wal_record(&[2; 32], b"two"));
        let good = read_wal(&bytes);
        assert_eq!(good.len(), 2);
        let flip = bytes.len() - 3;
        bytes[flip] ^= 0xff;
        assert_eq!(read_wal(&bytes), vec![([1; 32], b"one".to_vec())]);
    }
}

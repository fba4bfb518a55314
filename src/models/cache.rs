//! Content-addressed response cache in an embedded database (redb), shared across runs and graphs.
//!
//! The key is a hash of the canonical request (model name, prompt, sampling); the API key and the host
//! are not part of it, so a re-run, or another graph asking the same thing, is answered without a call.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, TableDefinition};
use sdg_operators::model::{ModelReply, Prompt, Sampling};

const RESPONSES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("responses");

#[derive(Debug, thiserror::Error)]
#[error("response cache {path}: {message}")]
pub struct CacheError {
    pub path: PathBuf,
    pub message: String,
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
    /// Inserts are batched: one write transaction (and fsync) per flush, not per response.
    pending: Mutex<Vec<([u8; 32], Vec<u8>)>>,
}

impl ResponseCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let fail = |message: String| CacheError { path: path.to_path_buf(), message };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| fail(e.to_string()))?;
        Ok(ResponseCache { path: path.to_path_buf(), db, pending: Mutex::new(Vec::new()) })
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<ModelReply> {
        if let Ok(pending) = self.pending.lock()
            && let Some((_, bytes)) = pending.iter().rev().find(|(k, _)| k == key)
        {
            return serde_json::from_slice(bytes).ok();
        }
        let read = self.db.begin_read().ok()?;
        let table = read.open_table(RESPONSES).ok()?;
        let value = table.get(key).ok()??;
        serde_json::from_slice(value.value()).ok()
    }

    /// Queues a reply; it is durable after the next `flush`.
    pub fn put(&self, key: [u8; 32], reply: &ModelReply) {
        let Ok(bytes) = serde_json::to_vec(reply) else { return };
        let full = match self.pending.lock() {
            Ok(mut pending) => {
                pending.push((key, bytes));
                pending.len() >= 512
            }
            Err(_) => false,
        };
        if full && let Err(error) = self.flush() {
            tracing::warn!(%error, "could not write the response cache");
        }
    }

    /// Writes queued replies in one transaction.
    pub fn flush(&self) -> Result<(), CacheError> {
        let batch = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(()),
        };
        if batch.is_empty() {
            return Ok(());
        }
        let fail = |message: String| CacheError { path: self.path.clone(), message };
        let write = self.db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            let mut table = write.open_table(RESPONSES).map_err(|e| fail(e.to_string()))?;
            for (key, bytes) in &batch {
                table.insert(key, bytes.as_slice()).map_err(|e| fail(e.to_string()))?;
            }
        }
        write.commit().map_err(|e| fail(e.to_string()))
    }
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
}

//! Passage embeddings cached on disk, so an unchanged corpus is embedded once per model.
//!
//! File layout (little endian): magic, 32-byte passage fingerprint, model id (u32 length + UTF-8), dim (u32),
//! count (u64), then `count * dim` f32 values row by row.

use std::fs;
use std::path::Path;

use super::{Passage, RetrieveError, fingerprint, io_err, unique_suffix};

const MAGIC: &[u8; 8] = b"SDGEMB01";
/// Mixed into the fingerprint: bump when the layout changes.
const FORMAT_VERSION: &[u8] = b"sdg-embeddings-v1";
const FILE_NAME: &str = "embeddings.bin";
/// Largest batch handed to `embed`.
const BATCH: usize = 64;

/// Embeds a batch of texts, one vector per text; the error is the model's message.
pub type PassageEmbedder<'a> = dyn Fn(&[&str]) -> Result<Vec<Vec<f32>>, String> + 'a;

/// Embeds `passages` with `embed` (batches of at most 64 texts), or reads the vectors cached in `dir` when the
/// passages (ids and texts, in order) and `model_id` are unchanged. A damaged cache file is recomputed.
pub fn embed_passages_cached(
    dir: &Path,
    model_id: &str,
    passages: &[Passage],
    embed: &PassageEmbedder,
) -> Result<Vec<Vec<f32>>, RetrieveError> {
    let fp = fingerprint(FORMAT_VERSION, passages);
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => match decode(&bytes, fp.as_bytes(), model_id, passages.len()) {
            Ok(Some(vectors)) => return Ok(vectors),
            Ok(None) => tracing::debug!(path = %path.display(), "embedding cache is stale; recomputing"),
            Err(reason) => tracing::warn!(path = %path.display(), reason, "embedding cache is damaged; recomputing"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read embedding cache; recomputing"),
    }
    let vectors = compute(passages, embed)?;
    write(dir, &path, &encode(fp.as_bytes(), model_id, &vectors)?)?;
    Ok(vectors)
}

fn compute(passages: &[Passage], embed: &PassageEmbedder) -> Result<Vec<Vec<f32>>, RetrieveError> {
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(passages.len());
    for batch in passages.chunks(BATCH) {
        let texts: Vec<&str> = batch.iter().map(|p| p.text.as_str()).collect();
        let out = embed(&texts).map_err(RetrieveError::Embed)?;
        if out.len() != texts.len() {
            return Err(RetrieveError::EmbedCount { expected: texts.len(), got: out.len() });
        }
        vectors.extend(out);
    }
    let dim = vectors.first().map_or(0, Vec::len);
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != dim || dim == 0 {
            return Err(RetrieveError::Dimension { expected: dim, got: v.len() });
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(RetrieveError::NonFinite(i));
        }
    }
    Ok(vectors)
}

fn encode(fp: &[u8; 32], model_id: &str, vectors: &[Vec<f32>]) -> Result<Vec<u8>, RetrieveError> {
    let dim = vectors.first().map_or(0, Vec::len);
    let too_big = |what: &str| RetrieveError::Embed(format!("{what} too large for the embedding cache"));
    let model_len = u32::try_from(model_id.len()).map_err(|_| too_big("model id"))?;
    let dim32 = u32::try_from(dim).map_err(|_| too_big("dimension"))?;
    let mut out = Vec::with_capacity(8 + 32 + 4 + model_id.len() + 4 + 8 + vectors.len() * dim * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(fp);
    out.extend_from_slice(&model_len.to_le_bytes());
    out.extend_from_slice(model_id.as_bytes());
    out.extend_from_slice(&dim32.to_le_bytes());
    out.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
    for x in vectors.iter().flatten() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

/// Reads fields off the front of a byte slice; `None` when the slice is too short.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

/// `Ok(None)`: a valid file for other passages or another model. `Err`: not a valid cache file.
fn decode(bytes: &[u8], fp: &[u8; 32], model_id: &str, count: usize) -> Result<Option<Vec<Vec<f32>>>, &'static str> {
    let mut c = Cursor(bytes);
    if c.take(MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("bad magic");
    }
    let file_fp = c.take(32).ok_or("truncated header")?;
    let model_len = c.u32().ok_or("truncated header")? as usize;
    let file_model = c.take(model_len).ok_or("truncated header")?;
    let dim = c.u32().ok_or("truncated header")? as usize;
    let file_count = c.u64().ok_or("truncated header")?;
    let expected_len = usize::try_from(file_count).ok().and_then(|n| n.checked_mul(dim)?.checked_mul(4));
    if expected_len != Some(c.0.len()) {
        return Err("payload size does not match the header");
    }
    if file_fp != fp || file_model != model_id.as_bytes() || file_count != count as u64 {
        return Ok(None);
    }
    if dim == 0 {
        return Ok(Some(vec![Vec::new(); count]));
    }
    let vectors =
        c.0.chunks_exact(dim * 4)
            .map(|row| row.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            .collect();
    Ok(Some(vectors))
}

/// Writes to a temporary file and renames it over the cache, so readers never see a partial file.
fn write(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), RetrieveError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp-{}", unique_suffix()));
    let result = (|| {
        let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        std::io::Write::write_all(&mut &file, bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("replace", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn passages(n: usize) -> Vec<Passage> {
        (0..n).map(|i| Passage::new(format!("p{i}"), format!("passage number {i}"))).collect()
    }

    /// Fake embedder: a 3-d vector derived from the text length; counts calls and checks the batch limit.
    fn fake<'a>(
        calls: &'a Cell<usize>,
        texts_seen: &'a Cell<usize>,
    ) -> impl Fn(&[&str]) -> Result<Vec<Vec<f32>>, String> {
        move |texts: &[&str]| {
            assert!(!texts.is_empty() && texts.len() <= BATCH, "batch of {}", texts.len());
            calls.set(calls.get() + 1);
            texts_seen.set(texts_seen.get() + texts.len());
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0, -0.5]).collect())
        }
    }

    #[test]
    fn reuses_cache_until_passages_or_model_change() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, seen) = (Cell::new(0), Cell::new(0));
        let embed = fake(&calls, &seen);
        let mut ps = passages(150);

        let first = embed_passages_cached(dir.path(), "mini", &ps, &embed).unwrap();
        assert_eq!((calls.get(), seen.get()), (3, 150), "150 texts in batches of 64, 64, 22");
        assert_eq!(first.len(), 150);
        assert_eq!(first[12], vec![17.0, 1.0, -0.5]);

        let again = embed_passages_cached(dir.path(), "mini", &ps, &embed).unwrap();
        assert_eq!(again, first);
        assert_eq!(calls.get(), 3, "served from the cache");

        embed_passages_cached(dir.path(), "other-model", &ps, &embed).unwrap();
        assert_eq!(calls.get(), 6, "another model recomputes");

        ps[149].text.push('!');
        let changed = embed_passages_cached(dir.path(), "other-model", &ps, &embed).unwrap();
        assert_eq!(calls.get(), 9, "a changed passage recomputes");
        assert_eq!(changed[149][0], first[149][0] + 1.0);
        embed_passages_cached(dir.path(), "other-model", &ps, &embed).unwrap();
        assert_eq!(calls.get(), 9);
        // Only the cache file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn damaged_cache_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, seen) = (Cell::new(0), Cell::new(0));
        let embed = fake(&calls, &seen);
        let ps = passages(5);
        let good = embed_passages_cached(dir.path(), "m", &ps, &embed).unwrap();
        let path = dir.path().join(FILE_NAME);
        let bytes = fs::read(&path).unwrap();
        for damaged in [&bytes[..bytes.len() - 1], &bytes[..20], b"garbage".as_slice(), &[]] {
            fs::write(&path, damaged).unwrap();
            assert_eq!(embed_passages_cached(dir.path(), "m", &ps, &embed).unwrap(), good);
        }
        assert_eq!(calls.get(), 5);
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn bad_embedder_output_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ps = passages(3);
        let short = |t: &[&str]| -> Result<Vec<Vec<f32>>, String> { Ok(vec![vec![1.0]; t.len() - 1]) };
        assert!(matches!(
            embed_passages_cached(dir.path(), "m", &ps, &short),
            Err(RetrieveError::EmbedCount { expected: 3, got: 2 })
        ));
        let ragged = |t: &[&str]| -> Result<Vec<Vec<f32>>, String> {
            Ok(t.iter().map(|s| vec![1.0; s.len() % 3 + 1]).collect())
        };
        let ps2 = vec![Passage::new("a", "x"), Passage::new("b", "xy")];
        assert!(matches!(embed_passages_cached(dir.path(), "m", &ps2, &ragged), Err(RetrieveError::Dimension { .. })));
        let nan = |t: &[&str]| -> Result<Vec<Vec<f32>>, String> { Ok(vec![vec![f32::NAN]; t.len()]) };
        assert!(matches!(embed_passages_cached(dir.path(), "m", &ps, &nan), Err(RetrieveError::NonFinite(0))));
        let failing = |_: &[&str]| -> Result<Vec<Vec<f32>>, String> { Err("model crashed".to_string()) };
        let err = embed_passages_cached(dir.path(), "m", &ps, &failing).unwrap_err();
        assert!(err.to_string().contains("model crashed"));
        assert!(!dir.path().join(FILE_NAME).exists(), "failures cache nothing");
    }

    #[test]
    fn empty_corpus_never_calls_the_embedder() {
        let dir = tempfile::tempdir().unwrap();
        let never = |_: &[&str]| -> Result<Vec<Vec<f32>>, String> { panic!("called") };
        assert!(embed_passages_cached(dir.path(), "m", &[], &never).unwrap().is_empty());
        assert!(embed_passages_cached(dir.path(), "m", &[], &never).unwrap().is_empty());
    }
}

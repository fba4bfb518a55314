//! The run directory: layout, preparation and the manifest.

pub mod manifest;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::BooleanArray;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::io::atomic::write_atomically as write_atomic;
use crate::io::rejects::{reject_key, text_column};
use crate::io::sink::{file_names, journal_dir, journal_key};
use manifest::{Manifest, RunStatus};

/// Paths inside a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> Self {
        RunDir { root: root.to_path_buf() }
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    pub fn rejects(&self) -> PathBuf {
        self.root.join("rejects")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// A sink folder and the folder of its key journals.
    fn remove_sink_dir(&self, dir: &str) -> Result<(), RunDirError> {
        for path in [self.root.join(dir), journal_dir(&self.root, dir)] {
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(|source| RunDirError::Io { path: path.clone(), source })?;
            }
        }
        Ok(())
    }

    /// Makes the folder ready to go on with the run it holds (`sdg run --resume`). The run must have been
    /// made by the same config; with `force`, a changed config is accepted and what the changed nodes
    /// (and their descendants) wrote is removed first, so they run again. Returns what was found: `None`
    /// when the folder holds no run yet (it is prepared as for a new one).
    pub fn prepare_resume(
        &self,
        sinks: &[(String, String)],
        config_hash: &str,
        lineage: &BTreeMap<String, String>,
        force: bool,
    ) -> Result<Option<Previous>, RunDirError> {
        let sink_dirs: Vec<String> = sinks.iter().map(|(_, dir)| dir.clone()).collect();
        let manifest_path = self.manifest();
        if !manifest_path.exists() {
            let holds_outputs = sink_dirs.iter().any(|d| non_empty(&self.root.join(d))) || non_empty(&self.rejects());
            if holds_outputs {
                return Err(RunDirError::NoManifest(self.root.clone()));
            }
            self.prepare(&sink_dirs, false)?;
            return Ok(None);
        }
        let previous =
            Manifest::read(&manifest_path).map_err(|source| RunDirError::Io { path: manifest_path.clone(), source })?;
        let mut changed: BTreeSet<String> = BTreeSet::new();
        if previous.config_hash != config_hash {
            // Nodes that are new, edited, downstream of an edit, or gone.
            changed.extend(
                lineage.iter().filter(|(id, l)| previous.lineage.get(*id) != Some(l)).map(|(id, _)| id.clone()),
            );
            changed.extend(previous.lineage.keys().filter(|id| !lineage.contains_key(*id)).cloned());
            if previous.lineage.is_empty() {
                changed.extend(lineage.keys().cloned());
            }
            if !force {
                return Err(RunDirError::ConfigChanged {
                    dir: self.root.clone(),
                    changed: changed.into_iter().collect(),
                });
            }
            // Outputs of changed sinks, and of sinks no longer in the config, are stale.
            for (id, summary) in &previous.outputs {
                let kept = sinks.iter().any(|(sink, dir)| sink == id && dir == &summary.dir && !changed.contains(id));
                if !kept {
                    self.remove_sink_dir(&summary.dir)?;
                }
            }
            for (id, dir) in sinks {
                if changed.contains(id) {
                    self.remove_sink_dir(dir)?;
                }
            }
            drop_rejects_of(&self.root, &changed)?;
        }
        for dir in sink_dirs.iter().map(|d| self.root.join(d)).chain([self.rejects(), self.state()]) {
            std::fs::create_dir_all(&dir).map_err(|source| RunDirError::Io { path: dir.clone(), source })?;
        }
        Ok(Some(Previous {
            status: previous.status,
            resumes: previous.resumes,
            changed: changed.into_iter().collect(),
        }))
    }

    /// Makes the folder ready. A folder that already holds a run is refused unless `overwrite`, in which
    /// case its outputs (not unrelated files) are removed first.
    pub fn prepare(&self, sink_dirs: &[String], overwrite: bool) -> Result<(), RunDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunDirError::Io { path, source }
        };
        let holds_run = self.manifest().exists()
            || sink_dirs.iter().any(|d| non_empty(&self.root.join(d)))
            || non_empty(&self.rejects());
        if holds_run {
            if !overwrite {
                return Err(RunDirError::HoldsRun(self.root.clone()));
            }
            let journals = self.state().join("parts");
            for dir in sink_dirs.iter().map(|d| self.root.join(d)).chain([self.rejects(), journals]) {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
                }
            }
            let manifest = self.manifest();
            if manifest.exists() {
                std::fs::remove_file(&manifest).map_err(io(&manifest))?;
            }
            // The dataset card of the replaced run (a README of the user's own is left alone).
            let card = self.root.join("README.md");
            if std::fs::read_to_string(&card).is_ok_and(|text| text.contains("# Synthetic dataset made by sdg")) {
                std::fs::remove_file(&card).map_err(io(&card))?;
            }
        }
        for dir in sink_dirs.iter().map(|d| self.root.join(d)).chain([self.rejects(), self.state()]) {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }
}

/// What a resumed run found in its folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Previous {
    /// How the previous process ended (`running` when it was killed).
    pub status: RunStatus,
    pub resumes: u32,
    /// Nodes that run again because the config changed (`--force`).
    pub changed: Vec<String>,
}

/// Removes the rejects of `nodes` from the committed rejects parts (rewritten in place, with their key
/// journals), so those nodes can reject again. Idempotent: a crash halfway is repaired by doing it again.
fn drop_rejects_of(run_dir: &Path, nodes: &BTreeSet<String>) -> Result<(), RunDirError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let dir = run_dir.join("rejects");
    let journals = journal_dir(run_dir, "rejects");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunDirError::Io { path, source }
    };
    let parquet = |path: &Path| {
        let path = path.to_path_buf();
        move |e: parquet::errors::ParquetError| RunDirError::Io { path, source: std::io::Error::other(e) }
    };
    let names = file_names(&dir).map_err(io(&dir))?;
    for name in names.iter().filter(|n| n.starts_with("part-") && n.ends_with(".parquet")) {
        let path = dir.join(name);
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet(&path))?;
        let schema = Arc::clone(reader.schema());
        let mut kept_batches = Vec::new();
        let mut dropped = 0;
        for batch in reader.build().map_err(parquet(&path))? {
            let batch = batch.map_err(|e| RunDirError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
            let node = text_column(&batch, "node");
            let keep: BooleanArray =
                (0..batch.num_rows()).map(|r| Some(!node.is_some_and(|n| nodes.contains(n.value(r))))).collect();
            dropped += keep.false_count();
            let kept = arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(|e| RunDirError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
            kept_batches.push(kept);
        }
        let keys: Vec<u8> = kept_batches
            .iter()
            .flat_map(|batch| {
                let (ids, node) = (text_column(batch, "id"), text_column(batch, "node"));
                (0..batch.num_rows()).map(move |r| {
                    journal_key(&reject_key(node.map_or("", |n| n.value(r)), ids.map_or("", |i| i.value(r))))
                })
            })
            .flat_map(|k| k.to_le_bytes())
            .collect();
        if dropped > 0 {
            let mut bytes = Vec::new();
            let mut writer = ArrowWriter::try_new(&mut bytes, schema, None).map_err(parquet(&path))?;
            for batch in &kept_batches {
                writer.write(batch).map_err(parquet(&path))?;
            }
            writer.close().map_err(parquet(&path))?;
            write_atomic(&path, &bytes).map_err(io(&path))?;
        }
        // The journal always follows the part as it now is.
        std::fs::create_dir_all(&journals).map_err(io(&journals))?;
        let keys_path = journals.join(format!("{name}.keys"));
        write_atomic(&keys_path, &keys).map_err(io(&keys_path))?;
    }
    Ok(())
}

fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "{0} already holds a run (manifest or parts); go on with it with --resume, replace it with --overwrite, or pick another -o"
    )]
    HoldsRun(PathBuf),
    #[error("{0} holds outputs but no manifest.json, so what made them is unknown; pass --overwrite to replace them")]
    NoManifest(PathBuf),
    #[error(
        "{dir} holds a run of a different config (changed nodes: {}); add --force to re-run those nodes and what depends on them, keeping the rest",
        changed.join(", ")
    )]
    ConfigChanged { dir: PathBuf, changed: Vec<String> },
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_used_folder_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        run.prepare(&["data".into()], false).unwrap();
        std::fs::write(dir.path().join("data/part-00000-00000.parquet"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        assert!(matches!(run.prepare(&["data".into()], false), Err(RunDirError::HoldsRun(_))));
        run.prepare(&["data".into()], true).unwrap();
        assert!(!dir.path().join("data/part-00000-00000.parquet").exists());
        assert!(dir.path().join("notes.txt").exists(), "unrelated files stay");
    }

    fn previous_run(dir: &Path, hash: &str, lineage: &[(&str, &str)]) {
        let manifest = Manifest {
            sdg_version: "0".into(),
            status: RunStatus::Running,
            config_hash: hash.into(),
            config_origin: "g.yaml".into(),
            config: String::new(),
            started_at_unix: 0,
            elapsed_s: 0.0,
            workers: 1,
            processes: 1,
            graph: vec![],
            nodes: BTreeMap::new(),
            outputs: [("out".to_string(), manifest::OutputSummary { dir: "data".into(), ..Default::default() })].into(),
            rejects: manifest::OutputSummary::default(),
            errors: vec![],
            models: BTreeMap::new(),
            lineage: lineage.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            resumes: 2,
        };
        manifest.write(&dir.join("manifest.json")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/part-00000-00000.parquet"), b"x").unwrap();
    }

    fn lineage(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn resume_goes_on_with_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        previous_run(dir.path(), "h1", &[("docs", "a"), ("out", "b")]);
        let run = RunDir::new(dir.path());
        let sinks = [("out".to_string(), "data".to_string())];
        let found = run.prepare_resume(&sinks, "h1", &lineage(&[("docs", "a"), ("out", "b")]), false).unwrap();
        assert_eq!(found, Some(Previous { status: RunStatus::Running, resumes: 2, changed: vec![] }));
        assert!(dir.path().join("data/part-00000-00000.parquet").exists(), "committed parts are kept");
    }

    #[test]
    fn resume_refuses_a_changed_config_and_force_clears_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        previous_run(dir.path(), "h1", &[("docs", "a"), ("gen", "g1"), ("out", "b1")]);
        let run = RunDir::new(dir.path());
        let sinks = [("out".to_string(), "data".to_string())];
        let now = lineage(&[("docs", "a"), ("gen", "g2"), ("out", "b2")]);
        let refused = run.prepare_resume(&sinks, "h2", &now, false).unwrap_err();
        assert!(matches!(&refused, RunDirError::ConfigChanged { changed, .. } if changed == &["gen", "out"]));
        assert!(dir.path().join("data/part-00000-00000.parquet").exists(), "a refusal touches nothing");
        let found = run.prepare_resume(&sinks, "h2", &now, true).unwrap().unwrap();
        assert_eq!(found.changed, vec!["gen", "out"]);
        assert!(!dir.path().join("data/part-00000-00000.parquet").exists(), "the changed sink starts over");
    }

    #[test]
    fn rejects_of_changed_nodes_are_dropped_and_the_journal_follows() {
        use crate::io::rejects::{RejectRow, to_batch};
        use crate::io::sink::{BucketWriter, PartSettings, SinkFormat, committed_parts};
        let dir = tempfile::tempdir().unwrap();
        let row = |id: &str, node: &str| RejectRow {
            id: id.into(),
            node: node.into(),
            reason: "why".into(),
            source_path: None,
            record: None,
        };
        let batch = to_batch(&[row("a", "docs"), row("b", "gen"), row("c", "gen")]);
        let keys: Vec<String> =
            [("docs", "a"), ("gen", "b"), ("gen", "c")].iter().map(|(n, i)| reject_key(n, i)).collect();
        let settings =
            PartSettings { format: SinkFormat::Parquet, rows_per_part: 10, row_group_rows: 10, zstd_level: 3 };
        let mut writer = BucketWriter::resumable(dir.path(), "rejects", 0, batch.schema(), settings.clone()).unwrap();
        writer.write_keyed(&batch, &keys).unwrap();
        writer.finish().unwrap();
        drop(writer);
        drop_rejects_of(dir.path(), &["gen".to_string()].into()).unwrap();
        let parts = committed_parts(dir.path(), "rejects", SinkFormat::Parquet).unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 1, "the journal holds the one kept reject");
        // A resumed writer skips the kept reject and takes the dropped ones again.
        let mut again = BucketWriter::resumable(dir.path(), "rejects", 0, batch.schema(), settings).unwrap();
        assert_eq!(again.write_keyed(&batch, &keys).unwrap(), 1);
    }

    #[test]
    fn resume_into_an_empty_folder_starts_a_run_and_outputs_without_a_manifest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let sinks = [("out".to_string(), "data".to_string())];
        assert_eq!(run.prepare_resume(&sinks, "h", &BTreeMap::new(), false).unwrap(), None);
        std::fs::write(dir.path().join("data/part-00000-00000.parquet"), b"x").unwrap();
        let error = run.prepare_resume(&sinks, "h", &BTreeMap::new(), false).unwrap_err();
        assert!(matches!(error, RunDirError::NoManifest(_)));
    }
}

//! The run directory: layout, preparation and the manifest.

pub mod manifest;

use std::path::{Path, PathBuf};

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
            for dir in sink_dirs.iter().map(|d| self.root.join(d)).chain([self.rejects()]) {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
                }
            }
            let manifest = self.manifest();
            if manifest.exists() {
                std::fs::remove_file(&manifest).map_err(io(&manifest))?;
            }
        }
        for dir in sink_dirs.iter().map(|d| self.root.join(d)).chain([self.rejects(), self.state()]) {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }
}

fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{0} already holds a run (manifest or parts); pick another -o or pass --overwrite")]
    HoldsRun(PathBuf),
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
}

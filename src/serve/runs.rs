//! The runs a server knows: one folder per run under the runs root, holding everything about it
//! (`config.yaml`, `inputs/`, `out/`, `run.log`), so a restarted server finds them all again. Runs are
//! child processes of the same binary (`sdg run`), so a run survives a server restart and a crash of one
//! run touches no other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Largest upload accepted (one file).
pub const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("no run `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> RunsError + '_ {
    move |source| RunsError::Io { path: path.to_path_buf(), source }
}

/// The run folders and the run processes this server started.
pub struct Runs {
    root: PathBuf,
    exe: PathBuf,
    cache_dir: Option<PathBuf>,
    children: Mutex<HashMap<String, Child>>,
}

impl Runs {
    pub fn new(root: PathBuf, exe: PathBuf, cache_dir: Option<PathBuf>) -> Result<Runs, RunsError> {
        std::fs::create_dir_all(&root).map_err(io_at(&root))?;
        Ok(Runs { root, exe, cache_dir, children: Mutex::new(HashMap::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The folder of run `id`; the id must be one this server could have made (no path tricks).
    pub fn dir(&self, id: &str) -> Result<PathBuf, RunsError> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(RunsError::NotFound(id.to_string()));
        }
        let dir = self.root.join(id);
        if !dir.is_dir() {
            return Err(RunsError::NotFound(id.to_string()));
        }
        Ok(dir)
    }

    /// A new, empty run folder.
    pub fn create(&self) -> Result<String, RunsError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        for attempt in 0u32..1000 {
            let salt = blake3::hash(format!("{}-{}-{attempt}", now.as_nanos(), std::process::id()).as_bytes());
            let id = format!("{}-{}", utc_stamp(now.as_secs()), &salt.to_hex()[..6]);
            let dir = self.root.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    std::fs::create_dir_all(dir.join("inputs")).map_err(io_at(&dir))?;
                    return Ok(id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RunsError::Io { path: dir, source: e }),
            }
        }
        Err(RunsError::Conflict("cannot find a free run id".into()))
    }

    /// Stores an uploaded file in the run's `inputs/`. Only plain names are taken, and a name already
    /// there is refused rather than replaced: a run's inputs never change under it.
    pub fn upload(&self, id: &str, name: &str, bytes: &[u8]) -> Result<Value, RunsError> {
        let dir = self.dir(id)?;
        check_file_name(name)?;
        if self.status(id)?.0 != "draft" {
            return Err(RunsError::Conflict(format!("run `{id}` has started; its inputs are fixed")));
        }
        let inputs = dir.join("inputs");
        std::fs::create_dir_all(&inputs).map_err(io_at(&inputs))?;
        let path = inputs.join(name);
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RunsError::Conflict(format!("`{name}` is already uploaded to this run")));
            }
            Err(e) => return Err(RunsError::Io { path, source: e }),
        };
        std::io::Write::write_all(&mut file, bytes).map_err(io_at(&path))?;
        Ok(json!({"name": name, "path": format!("inputs/{name}"), "bytes": bytes.len()}))
    }

    pub fn files(&self, id: &str) -> Result<Value, RunsError> {
        let inputs = self.dir(id)?.join("inputs");
        let mut files = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&inputs) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push(json!({"name": name, "path": format!("inputs/{name}"), "bytes": bytes}));
            }
        }
        files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(json!({"files": files}))
    }

    /// Writes the config and starts the run.
    pub fn start(&self, id: &str, yaml: &str) -> Result<(), RunsError> {
        let dir = self.dir(id)?;
        if self.status(id)?.0 != "draft" {
            return Err(RunsError::Conflict(format!("run `{id}` has already started")));
        }
        let config = dir.join("config.yaml");
        crate::io::atomic::write_atomically(&config, yaml.as_bytes()).map_err(io_at(&config))?;
        self.spawn(id, &dir, false)
    }

    /// Goes on with an interrupted or failed run.
    pub fn resume(&self, id: &str) -> Result<(), RunsError> {
        let dir = self.dir(id)?;
        let (status, active) = self.status(id)?;
        if active {
            return Err(RunsError::Conflict(format!("run `{id}` is running")));
        }
        if !matches!(status.as_str(), "interrupted" | "failed") {
            return Err(RunsError::Conflict(format!("run `{id}` is {status}; only interrupted or failed runs resume")));
        }
        self.spawn(id, &dir, true)
    }

    fn spawn(&self, id: &str, dir: &Path, resume: bool) -> Result<(), RunsError> {
        let log_path = dir.join("run.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_at(&log_path))?;
        let log_err = log.try_clone().map_err(io_at(&log_path))?;
        let mut command = Command::new(&self.exe);
        command.current_dir(dir).args(["run", "config.yaml", "-o", "out", "--quiet"]);
        if resume {
            command.arg("--resume");
        }
        if let Some(cache) = &self.cache_dir {
            command.arg("--cache-dir").arg(cache);
        }
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = command.spawn().map_err(io_at(&self.exe))?;
        // The run's own manifest says `running` from its first second; until then the progress file marks it.
        let state = dir.join("out").join("state");
        let _ = std::fs::create_dir_all(&state);
        let _ = std::fs::write(state.join("progress.json"), br#"{"status":"starting","nodes":{}}"#);
        self.children.lock().expect("children lock").insert(id.to_string(), child);
        Ok(())
    }

    /// Asks a run to stop: it drains, commits and ends `interrupted` (resumable).
    pub fn cancel(&self, id: &str) -> Result<(), RunsError> {
        self.dir(id)?;
        let mut children = self.children.lock().expect("children lock");
        let Some(child) = children.get_mut(id) else {
            return Err(RunsError::Conflict(format!("run `{id}` is not running")));
        };
        if let Ok(None) = child.try_wait() {
            // SIGINT: the run's graceful stop (a second one would exit at once, so only one is sent).
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
        }
        Ok(())
    }

    /// Whether a run process of this server is alive (reaping the ones that ended).
    fn alive(&self, id: &str) -> bool {
        let mut children = self.children.lock().expect("children lock");
        match children.get_mut(id).map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                children.remove(id);
                false
            }
            None => false,
        }
    }

    /// Reaps finished children (called now and then so none stays a zombie).
    pub fn reap(&self) {
        let ids: Vec<String> = self.children.lock().expect("children lock").keys().cloned().collect();
        for id in ids {
            self.alive(&id);
        }
    }

    /// The run's status and whether it is active. A run is active while its process lives, or (after a
    /// server restart) while its progress file keeps being rewritten.
    pub fn status(&self, id: &str) -> Result<(String, bool), RunsError> {
        self.status_given(id, self.manifest(id)?.as_ref())
    }

    /// The run's `manifest.json`, when it has one.
    pub fn manifest(&self, id: &str) -> Result<Option<Value>, RunsError> {
        Ok(read_json(&self.dir(id)?.join("out").join("manifest.json")))
    }

    /// As [`status`](Self::status), with the manifest already read.
    fn status_given(&self, id: &str, manifest: Option<&Value>) -> Result<(String, bool), RunsError> {
        let dir = self.dir(id)?;
        let out = dir.join("out");
        let alive = self.alive(id);
        let fresh = std::fs::metadata(out.join("state").join("progress.json"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(3));
        let written = manifest.and_then(|m| m["status"].as_str()).map(str::to_string);
        let started = dir.join("config.yaml").exists();
        let status = match (written.as_deref(), alive || fresh) {
            (_, true) => "running".to_string(),
            // A run whose process is gone while its manifest still says running was killed: resumable.
            (Some("running"), false) => "interrupted".to_string(),
            (Some(status), false) => status.to_string(),
            (None, false) if started => "failed".to_string(),
            (None, false) => "draft".to_string(),
        };
        let active = alive || fresh;
        Ok((status, active))
    }

    pub fn summary(&self, id: &str) -> Result<Value, RunsError> {
        self.summary_given(id, self.manifest(id)?.as_ref())
    }

    /// As [`summary`](Self::summary), with the manifest already read.
    pub fn summary_given(&self, id: &str, manifest: Option<&Value>) -> Result<Value, RunsError> {
        let dir = self.dir(id)?;
        let (status, active) = self.status_given(id, manifest)?;
        let manifest = manifest.unwrap_or(&Value::Null);
        let config = std::fs::read_to_string(dir.join("config.yaml")).unwrap_or_default();
        let name = crate::config::yaml::parse(&config)
            .ok()
            .map(|node| crate::config::preset::to_json(&node))
            .and_then(|v| v.pointer("/task/name").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| id.to_string());
        let rows: u64 = manifest["outputs"]
            .as_object()
            .map_or(0, |outputs| outputs.values().filter_map(|o| o["rows"].as_u64()).sum());
        let models = manifest["models"].as_object();
        let sum = |key: &str| -> f64 { models.map_or(0.0, |m| m.values().filter_map(|s| s[key].as_f64()).sum()) };
        let started_at = manifest["started_at_unix"].as_u64().or_else(|| {
            std::fs::metadata(&dir)
                .and_then(|m| m.created().or(m.modified()))
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()))
        });
        Ok(json!({
            "id": id, "name": name, "status": status, "active": active,
            "started_at_unix": started_at, "elapsed_s": manifest["elapsed_s"].as_f64(),
            "rows": rows, "rejected": manifest["rejects"]["rows"].as_u64().unwrap_or(0),
            "cost": sum("cost"), "requests": sum("requests") as u64,
            "resumable": !active && matches!(status.as_str(), "interrupted" | "failed"),
        }))
    }

    /// Every run, newest first.
    pub fn list(&self) -> Value {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let runs: Vec<Value> = ids.iter().filter_map(|id| self.summary(id).ok()).collect();
        json!({"runs": runs})
    }

    /// The live progress (while the run works) or the last one written.
    pub fn progress(&self, id: &str) -> Result<Option<Value>, RunsError> {
        Ok(read_json(&self.dir(id)?.join("out").join("state").join("progress.json")))
    }
}

/// Names a file may be uploaded under: one plain path component, no hidden files, no separators.
pub fn check_file_name(name: &str) -> Result<(), RunsError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control)
        || Path::new(name).components().count() != 1;
    if bad {
        return Err(RunsError::Invalid(format!("`{name}` is not a plain file name")));
    }
    Ok(())
}

pub fn read_json(path: &Path) -> Option<Value> {
    std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_must_be_plain() {
        for bad in ["", "../x", "a/b", "..", ".", ".hidden", "a\\b", "x\0y", "line\nbreak"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        for good in ["notes.md", "demos.jsonl", "Report 2024 (final).pdf", "données.txt"] {
            assert!(check_file_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_795_964_400), "20261129-150000");
    }

    #[test]
    fn run_ids_are_checked_before_any_path_is_built() {
        let root = tempfile::tempdir().unwrap();
        let runs = Runs::new(root.path().to_path_buf(), PathBuf::from("/bin/false"), None).unwrap();
        let id = runs.create().unwrap();
        assert!(runs.dir(&id).is_ok());
        for bad in ["..", "../etc", "A", "x/y", ""] {
            assert!(matches!(runs.dir(bad), Err(RunsError::NotFound(_))), "{bad}");
        }
        assert_eq!(runs.status(&id).unwrap(), ("draft".to_string(), false));
        runs.upload(&id, "a.txt", b"hello").unwrap();
        assert!(matches!(runs.upload(&id, "a.txt", b"again"), Err(RunsError::Conflict(_))));
        assert_eq!(std::fs::read(root.path().join(&id).join("inputs/a.txt")).unwrap(), b"hello");
    }
}

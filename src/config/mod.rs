//! YAML config -> typed values, once, at the edge. Every problem is reported with file, line and key path.
//!
//! A config is a list of graph nodes plus run settings:
//! ```yaml
//! run: {batch_rows: 1024, window: 4, partitions: 4}
//! nodes:
//!   - {id: docs, kind: ingest, paths: [./corpus]}
//!   - {id: chunks, kind: chunk, input: docs, max_tokens: 256, overlap: 32}
//!   - {id: out, kind: sink, input: chunks}
//! ```

pub mod de;
pub mod preset;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sdg_operators::chunk::ChunkSpec;
use sdg_operators::generate::{GenerateSpec, parse_demos_jsonl};

use crate::io::ingest::IngestSpec;
use crate::io::passages_source::PassagesSpec;
use crate::kinds::DecodeContext;
pub use crate::kinds::NodeSpec;
use crate::models::ModelSpec;
pub use de::Diagnostic;
use yaml::{Node, Value};

/// The config a run starts from when none is given: the quickstart recipe over the bundled sample corpus.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../configs/quickstart.yaml");

/// Engine settings that are not a node.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// Rows per source batch (a batch also closes at `batch_bytes`).
    #[serde(default = "defaults::batch_rows")]
    pub batch_rows: usize,
    /// Text bytes per source batch.
    #[serde(default = "defaults::batch_bytes")]
    pub batch_bytes: usize,
    /// Source batches in flight per worker before the source waits for the sinks: this bounds memory.
    #[serde(default = "defaults::window")]
    pub window: usize,
    /// Output buckets. Rows go to a bucket by a hash of their id, so the output does not depend on the
    /// number of workers or processes.
    #[serde(default = "defaults::partitions")]
    pub partitions: u32,
    /// Seed for everything random.
    #[serde(default)]
    pub seed: u64,
    /// Folder of the response cache shared across runs (default: the user cache folder, or
    /// `$SDG_CACHE_DIR`). `sdg run --no-cache` turns it off.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            batch_rows: defaults::batch_rows(),
            batch_bytes: defaults::batch_bytes(),
            window: defaults::window(),
            partitions: defaults::partitions(),
            seed: 0,
            cache_dir: None,
        }
    }
}

mod defaults {
    pub fn batch_rows() -> usize {
        1024
    }
    pub fn batch_bytes() -> usize {
        4 << 20
    }
    pub fn window() -> usize {
        4
    }
    pub fn partitions() -> u32 {
        4
    }
}

/// A `generate` node: its settings and the few-shot demos read from `demos` (a JSONL file).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateNode {
    pub spec: GenerateSpec,
    pub demos: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One node of the graph as written.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub id: String,
    pub kind: String,
    /// `None` when its settings had errors (already reported).
    pub spec: Option<NodeSpec>,
    pub inputs: Vec<String>,
    /// Where the node starts, for messages about the node as a whole.
    pub line: usize,
    pub col: usize,
    /// Where each input is named.
    pub input_positions: Vec<(usize, usize)>,
    /// Key path of the node: `nodes[2]`.
    pub path: String,
    /// Where each of the node's own keys is written, for messages about one setting.
    pub key_positions: Vec<(String, usize, usize)>,
}

impl NodeConfig {
    /// Line and column of `key` in this node, or of the node itself.
    pub fn position_of(&self, key: &str) -> (usize, usize) {
        self.key_positions
            .iter()
            .find(|(k, _, _)| k == key)
            .map_or((self.line, self.col), |(_, line, col)| (*line, *col))
    }
}

/// A parsed config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (`<embedded>` for the default).
    pub origin: PathBuf,
    /// Relative paths in the config are resolved against this folder.
    pub base_dir: PathBuf,
    pub run: RunSettings,
    /// Named model endpoints.
    pub models: BTreeMap<String, ModelSpec>,
    pub nodes: Vec<NodeConfig>,
    /// BLAKE3 of the config's content (not its formatting or comments), hex.
    pub hash: String,
    /// The config text, kept for the manifest and dataset card.
    pub text: String,
    /// The `nodes:` YAML a `task:` expanded to (`sdg plan --eject` writes it out).
    pub expanded: Option<String>,
    /// Records a `task:` recipe must deliver (`num_samples`).
    pub target_samples: Option<usize>,
    /// Whether the recipe's source can draw more when too few survive (web, distill): `sdg run` tops up.
    /// A local corpus is read whole in one pass, so a shortfall is reported instead.
    pub can_top_up: bool,
    /// What `sdg run` exports after a completed run (`export:`).
    pub export: Option<crate::export::ExportConfig>,
}

impl Config {
    /// The config as an editable graph: the text with its `task:` section replaced by the expanded `nodes:`.
    /// `None` when the config has no task.
    pub fn ejected(&self) -> Option<String> {
        let expanded = self.expanded.as_ref()?;
        let lines: Vec<&str> = self.text.lines().collect();
        // The task section runs from its key to the next top-level key (or the end).
        let start = lines.iter().position(|l| l.starts_with("task:"))?;
        let end = (start + 1..lines.len())
            .find(|&i| {
                let l = lines[i];
                !l.is_empty() && !l.starts_with([' ', '\t', '#']) && !l.starts_with("- ")
            })
            .unwrap_or(lines.len());
        let mut out = String::new();
        for line in &lines[..start] {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!(
            "# Expanded from the `task:` recipe of {} by `sdg plan --eject`.\n",
            self.origin.display()
        ));
        out.push_str(expanded);
        for line in &lines[end..] {
            out.push_str(line);
            out.push('\n');
        }
        Some(out)
    }
}

/// A config with problems: every one of them, located.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub origin: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let path = if d.path.is_empty() { String::new() } else { format!(" `{}`", d.path) };
            write!(f, "{}:{}:{}:{path} {}", self.origin.display(), d.line, d.col, d.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and parses a config file. Problems found here are returned with the config when it could
    /// still be built, so graph checks can add theirs before anything is reported.
    pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.to_path_buf(),
            diagnostics: vec![Diagnostic {
                line: 0,
                col: 0,
                path: String::new(),
                message: format!("cannot read config: {e}"),
            }],
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, path, &base_dir)
    }

    /// The embedded default config. Its paths are relative to `configs/` under the current folder, as if
    /// it were read from `configs/quickstart.yaml` in the repository root.
    pub fn embedded() -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, Path::new("<embedded configs/quickstart.yaml>"), Path::new("configs"))
    }

    /// Parses config text; `origin` names it in messages and `base_dir` anchors relative paths.
    pub fn parse(text: &str, origin: &Path, base_dir: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        Config::parse_scaled(text, origin, base_dir, 1.0)
    }

    /// As [`parse`](Self::parse), with a `task:` recipe's sources drawing `scale` times as much (top-up).
    pub fn parse_scaled(
        text: &str,
        origin: &Path,
        base_dir: &Path,
        scale: f64,
    ) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let fail = |diagnostics| ConfigError { origin: origin.to_path_buf(), diagnostics };
        let root = yaml::parse(text).map_err(|e| {
            fail(vec![Diagnostic {
                line: e.line,
                col: e.col,
                path: String::new(),
                message: format!("invalid YAML: {}", e.message),
            }])
        })?;
        let mut diagnostics = Vec::new();
        let Value::Map(entries) = &root.value else {
            return Err(fail(vec![Diagnostic::at(
                &root,
                "",
                format!("a config is a map with `nodes` (and optionally `run`), found {}", root.describe()),
            )]));
        };
        const TOP: &[&str] = &["run", "models", "nodes", "task", "export"];
        for (key, _) in entries {
            let name = key.as_str().unwrap_or("");
            if !TOP.contains(&name) {
                diagnostics.push(Diagnostic::at(key, name, de::unknown_message("key", name, TOP)));
            }
        }
        let run = match root.get("run") {
            Some(node) => {
                let run = de::decode::<RunSettings>(node, "run", &mut diagnostics).unwrap_or_default();
                // A zero would make a source batch, a window or the bucket count empty.
                for (key, value) in [
                    ("batch_rows", run.batch_rows as u64),
                    ("batch_bytes", run.batch_bytes as u64),
                    ("window", run.window as u64),
                    ("partitions", run.partitions as u64),
                ] {
                    if value == 0 {
                        let at = node.get(key).unwrap_or(node);
                        diagnostics.push(Diagnostic::at(at, &format!("run.{key}"), "must be at least 1"));
                    }
                }
                run
            }
            None => RunSettings::default(),
        };
        let export = root.get("export").and_then(|node| {
            let export = de::decode::<crate::export::ExportConfig>(node, "export", &mut diagnostics)?;
            if let Err(problems) = export.settings() {
                for (key, message) in problems {
                    let at = node.get(key.split('[').next().unwrap_or(&key)).unwrap_or(node);
                    diagnostics.push(Diagnostic::at(at, &format!("export.{key}"), message));
                }
            }
            Some(export)
        });
        let mut models = BTreeMap::new();
        if let Some(section) = root.get("models") {
            match &section.value {
                Value::Map(entries) => {
                    for (key, value) in entries {
                        let Some(name) = key.as_str() else { continue };
                        let path = format!("models.{name}");
                        if let Some(mut spec) = de::decode::<ModelSpec>(value, &path, &mut diagnostics) {
                            spec.tokenizer = spec.tokenizer.map(|file| resolve(base_dir, &file));
                            spec.chat_template = spec.chat_template.map(|file| resolve(base_dir, &file));
                            // A local model named by a path relative to the config.
                            let relative = resolve(base_dir, Path::new(&spec.model));
                            if spec.provider == crate::models::spec::Provider::Local
                                && !Path::new(&spec.model).is_absolute()
                                && relative.exists()
                            {
                                spec.model = relative.to_string_lossy().into_owned();
                            }
                            for (setting, message) in spec.check() {
                                let at = value.get(&setting).unwrap_or(value);
                                diagnostics.push(Diagnostic::at(at, &format!("{path}.{setting}"), message));
                            }
                            models.insert(name.to_string(), spec);
                        }
                    }
                }
                _ => diagnostics.push(Diagnostic::at(
                    section,
                    "models",
                    format!("expected a map of named endpoints, found {}", section.describe()),
                )),
            }
        }
        let mut nodes = Vec::new();
        let mut expanded = None;
        let mut target = None;
        let mut can_top_up = false;
        match (root.get("task"), root.get("nodes")) {
            (Some(task), Some(_)) => diagnostics.push(Diagnostic::at(
                task,
                "task",
                "a config has either `task` (a recipe expanded into a graph) or `nodes` (the graph), not both",
            )),
            (Some(task), None) => {
                if let Some(spec) = de::decode::<preset::TaskSpec>(task, "task", &mut diagnostics) {
                    // The distill recipe sizes its calls by the number of demos (read again by the node).
                    let demo_count = spec.demos.as_ref().map_or(0, |file| {
                        std::fs::read_to_string(resolve(base_dir, file))
                            .map_or(0, |text| text.lines().filter(|l| !l.trim().is_empty()).count())
                    });
                    target = Some(spec.num_samples);
                    can_top_up = matches!(spec.source, preset::Source::Web | preset::Source::Distill);
                    match preset::expand(&spec, demo_count, scale) {
                        Ok(list) => {
                            let text = preset::to_yaml(&serde_json::json!({ "nodes": list }));
                            let before = diagnostics.len();
                            match yaml::parse(&text) {
                                Ok(tree) => {
                                    if let Some(Node { value: Value::Seq(items), .. }) = tree.get("nodes") {
                                        for (index, item) in items.iter().enumerate() {
                                            if let Some(node) = node_config(item, index, base_dir, &mut diagnostics) {
                                                nodes.push(node);
                                            }
                                        }
                                    }
                                }
                                Err(e) => {
                                    diagnostics.push(Diagnostic::at(task, "task", format!("internal: {}", e.message)))
                                }
                            }
                            // Problems inside the expansion are reported at the task, naming the generated node.
                            for d in &mut diagnostics[before..] {
                                d.path = format!("task (expanded) {}", d.path);
                                d.line = task.line;
                                d.col = task.col;
                            }
                            expanded = Some(text);
                        }
                        Err(e) => {
                            let at = task.get(e.key.split('.').next().unwrap_or("")).unwrap_or(task);
                            diagnostics.push(Diagnostic::at(at, &format!("task.{}", e.key), e.message));
                        }
                    }
                }
            }
            (None, None) => {
                diagnostics.push(Diagnostic::at(&root, "nodes", "missing key `nodes` (the graph) or `task` (a recipe)"))
            }
            (None, Some(Node { value: Value::Seq(items), .. })) => {
                for (index, item) in items.iter().enumerate() {
                    if let Some(node) = node_config(item, index, base_dir, &mut diagnostics) {
                        nodes.push(node);
                    }
                }
            }
            (None, Some(other)) => diagnostics.push(Diagnostic::at(
                other,
                "nodes",
                format!("expected a list of nodes, found {}", other.describe()),
            )),
        }
        let config = Config {
            origin: origin.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            run,
            models,
            nodes,
            hash: content_hash(&root),
            text: text.to_string(),
            expanded,
            target_samples: target,
            can_top_up,
            export,
        };
        Ok((config, diagnostics))
    }

    pub fn node(&self, id: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

fn node_config(item: &Node, index: usize, base_dir: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<NodeConfig> {
    let path = format!("nodes[{index}]");
    let Value::Map(entries) = &item.value else {
        diagnostics.push(Diagnostic::at(
            item,
            &path,
            format!("a node is a map with `id` and `kind`, found {}", item.describe()),
        ));
        return None;
    };
    let text_of = |key: &str, diagnostics: &mut Vec<Diagnostic>| -> Option<String> {
        match item.get(key) {
            None => {
                diagnostics.push(Diagnostic::at(item, &path, format!("missing key `{key}`")));
                None
            }
            Some(node) => match node.as_str() {
                Some(text) if !text.is_empty() => Some(text.to_string()),
                _ => {
                    diagnostics.push(Diagnostic::at(
                        node,
                        &format!("{path}.{key}"),
                        format!("expected a name, found {}", node.describe()),
                    ));
                    None
                }
            },
        }
    };
    let id = text_of("id", diagnostics)?;
    let kind = text_of("kind", diagnostics);
    let mut inputs = Vec::new();
    let mut input_positions = Vec::new();
    for key in ["input", "inputs"] {
        let Some(node) = item.get(key) else { continue };
        let names: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        for name in names {
            match name.as_str() {
                Some(text) => {
                    inputs.push(text.to_string());
                    input_positions.push((name.line, name.col));
                }
                None => diagnostics.push(Diagnostic::at(
                    name,
                    &format!("{path}.{key}"),
                    format!("expected a node id, found {}", name.describe()),
                )),
            }
        }
    }
    let settings = Node {
        value: Value::Map(
            entries
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), Some("id" | "kind" | "input" | "inputs")))
                .cloned()
                .collect(),
        ),
        line: item.line,
        col: item.col,
    };
    let context = DecodeContext { item, path: &path, base_dir };
    let spec = match kind.as_deref() {
        None => None,
        Some(name) => match crate::kinds::find(name) {
            Some(found) => found.decode(&settings, &context, diagnostics),
            None => {
                let at = item.get("kind").unwrap_or(item);
                let names = crate::kinds::names();
                diagnostics.push(Diagnostic::at(
                    at,
                    &format!("{path}.kind"),
                    de::unknown_message("node kind", name, &names),
                ));
                None
            }
        },
    };
    Some(NodeConfig {
        id,
        kind: kind.unwrap_or_default(),
        spec,
        inputs,
        line: item.line,
        col: item.col,
        input_positions,
        path,
        key_positions: entries
            .iter()
            .filter_map(|(k, _)| k.as_str().map(|name| (name.to_string(), k.line, k.col)))
            .collect(),
    })
}

/// `ingest`: its paths resolved against the config's folder.
pub(crate) fn decode_ingest(
    settings: &Node,
    context: &DecodeContext,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<IngestSpec> {
    de::decode::<IngestSpec>(settings, context.path, diagnostics).map(|s| s.resolved(context.base_dir))
}

/// `passages`: its corpus paths resolved against the config's folder.
pub(crate) fn decode_passages(
    settings: &Node,
    context: &DecodeContext,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<PassagesSpec> {
    de::decode::<PassagesSpec>(settings, context.path, diagnostics).map(|s| s.resolved(context.base_dir))
}

/// `chunk`: a tokenizer file resolved against the config's folder.
pub(crate) fn decode_chunk(
    settings: &Node,
    context: &DecodeContext,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ChunkSpec> {
    de::decode::<ChunkSpec>(settings, context.path, diagnostics).map(|mut s| {
        if let Some(file) = &s.tokenizer {
            s.tokenizer = Some(resolve(context.base_dir, file));
        }
        s
    })
}

/// `generate`: its settings and the few-shot demos its `demos` file holds, read now so a bad file is a
/// config error located at the key.
pub(crate) fn decode_generate(
    settings: &Node,
    context: &DecodeContext,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<GenerateNode> {
    let mut spec = de::decode::<GenerateSpec>(settings, context.path, diagnostics)?;
    let demos = match &spec.demos {
        None => Vec::new(),
        Some(file) => {
            let file = resolve(context.base_dir, file);
            let at = context.item.get("demos").unwrap_or(context.item);
            let loaded = load_demos(&file);
            spec.demos = Some(file);
            match loaded {
                Ok(demos) => demos,
                Err(message) => {
                    diagnostics.push(Diagnostic::at(at, &format!("{}.demos", context.path), message));
                    return None;
                }
            }
        }
    };
    Some(GenerateNode { spec, demos })
}

/// Few-shot demos from a JSONL file (one object per line) or a Parquet file (one object per row).
fn load_demos(file: &Path) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let context = |e: String| format!("demos {}: {e}", file.display());
    if file.extension().is_some_and(|x| x.eq_ignore_ascii_case("parquet")) {
        let handle = std::fs::File::open(file).map_err(|e| context(e.to_string()))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)
            .and_then(|b| b.build())
            .map_err(|e| context(e.to_string()))?;
        let mut demos = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| context(e.to_string()))?;
            for row in 0..batch.num_rows() {
                match crate::io::json_rows::row_to_json(&batch, row).map_err(|e| context(e.to_string()))? {
                    serde_json::Value::Object(map) => demos.push(map),
                    _ => return Err(context(format!("row {} is not an object", row + 1))),
                }
            }
        }
        return Ok(demos);
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read demos {}: {e}", file.display()))?;
    parse_demos_jsonl(&text).map_err(|e| context(e.to_string()))
}

/// `path` anchored at `base_dir` unless it is absolute.
pub fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) }
}

/// Hash of the tree's content: formatting, comments and positions do not count.
fn content_hash(root: &Node) -> String {
    fn feed(node: &Node, hasher: &mut blake3::Hasher) {
        match &node.value {
            Value::Null => {
                hasher.update(b"n");
            }
            Value::Scalar { text, plain } => {
                hasher.update(if *plain { b"p" } else { b"q" });
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            Value::Seq(items) => {
                hasher.update(b"[");
                hasher.update(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| feed(i, hasher));
            }
            Value::Map(entries) => {
                hasher.update(b"{");
                hasher.update(&(entries.len() as u64).to_le_bytes());
                for (k, v) in entries {
                    feed(k, hasher);
                    feed(v, hasher);
                }
            }
        }
    }
    let mut hasher = blake3::Hasher::new();
    feed(root, &mut hasher);
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Config, Vec<Diagnostic>) {
        Config::parse(text, Path::new("t.yaml"), Path::new("/base")).unwrap()
    }

    #[test]
    fn the_export_section_is_checked_with_the_rest() {
        let (config, diagnostics) =
            parse("export:\n  formats: [verl-rl, nope]\n  splits: {train: 0.9, test: 0.2}\nnodes: []\n");
        let found: Vec<(usize, &str)> = diagnostics.iter().map(|d| (d.line, d.path.as_str())).collect();
        assert_eq!(found, vec![(2, "export.formats[1]"), (3, "export.splits")]);
        assert!(config.export.is_some());
        let (config, diagnostics) =
            parse("export: {formats: [messages], splits: {train: 0.5, test: 0.5}}\nnodes: []\n");
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let settings = config.export.unwrap().settings().unwrap();
        assert_eq!(settings.splits[0].0, "train");
    }

    #[test]
    fn zero_run_settings_are_errors_at_their_line() {
        let (_, diagnostics) = parse("run:\n  batch_rows: 0\n  window: 0\nnodes: []\n");
        let found: Vec<(usize, &str)> = diagnostics.iter().map(|d| (d.line, d.path.as_str())).collect();
        assert_eq!(found, vec![(2, "run.batch_rows"), (3, "run.window")]);
    }

    #[test]
    fn parses_nodes_and_resolves_paths() {
        let (config, diags) = parse(
            "run: {partitions: 2}\nnodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: out, kind: sink, input: docs}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(config.run.partitions, 2);
        assert_eq!(config.nodes.len(), 2);
        assert_eq!(config.nodes[1].inputs, vec!["docs".to_string()]);
        match &config.nodes[0].spec {
            Some(NodeSpec::Ingest(spec)) => assert_eq!(spec.paths, vec![PathBuf::from("/base/corpus")]),
            other => panic!("expected ingest, got {other:?}"),
        }
    }

    #[test]
    fn collects_errors_from_every_node() {
        let (config, diags) = parse(
            "nodse: 1\nnodes:\n  - {id: docs, kind: ingset}\n  - {id: c, kind: chunk, input: docs, max_tokens: lots}\n",
        );
        assert_eq!(config.nodes.len(), 2);
        let messages: Vec<_> = diags.iter().map(|d| (d.line, d.message.clone())).collect();
        assert!(messages.contains(&(1, "unknown key `nodse`, did you mean `nodes`?".to_string())), "{messages:?}");
        assert!(
            messages.contains(&(3, "unknown node kind `ingset`, did you mean `ingest`?".to_string())),
            "{messages:?}"
        );
        assert!(messages.iter().any(|(line, m)| *line == 4 && m.contains("expected an integer")), "{messages:?}");
    }

    #[test]
    fn demos_load_from_jsonl_and_parquet_and_bad_lines_are_located() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d.jsonl"), "{\"q\": \"a\"}\n[1]\n").unwrap();
        crate::testkit::write_parquet(&dir.path().join("d.parquet"), &[("q", vec![Some("x"), Some("y")])]).unwrap();
        let node = |file: &str| {
            format!("nodes:\n  - {{id: g, kind: generate, input: x, model: m, prompt: hi, demos: {file}}}\n")
        };
        let (config, diags) = Config::parse(&node("d.parquet"), Path::new("t.yaml"), dir.path()).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        match &config.nodes[0].spec {
            Some(NodeSpec::Generate(g)) => {
                assert_eq!(g.demos.len(), 2);
                assert_eq!(g.demos[1]["q"], "y");
            }
            other => panic!("{other:?}"),
        }
        let (_, diags) = Config::parse(&node("d.jsonl"), Path::new("t.yaml"), dir.path()).unwrap();
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].path, "nodes[0].demos");
        assert!(diags[0].message.contains("line 2"), "{}", diags[0].message);
    }

    #[test]
    fn hash_ignores_formatting_and_comments() {
        let (a, _) = parse("nodes:\n  - {id: docs, kind: ingest, paths: [c]}\n");
        let (b, _) = parse("# comment\nnodes:\n  - id: docs\n    kind: ingest\n    paths:\n      - c\n");
        let (c, _) = parse("nodes:\n  - {id: docs, kind: ingest, paths: [d]}\n");
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let (config, diags) = Config::embedded().unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        assert!(!config.nodes.is_empty());
    }
}

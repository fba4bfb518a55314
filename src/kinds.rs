//! The one table of node kinds. Every list of kinds in sdg comes from it: the typed [`NodeSpec`] enum and its
//! config decoder, the kind names `sdg validate` suggests from, plan instantiation and schemas, `sdg kinds`,
//! and the list the web UI offers (served by `GET /api/kinds`).
//!
//! Adding a kind is its own file (the operator and its settings type, with an `EXAMPLE` config) plus one line
//! of [`node_kinds!`] below, plus its README section; `tests/kinds.rs` fails for a kind that lacks an example
//! that validates and runs, or a README section.

use std::path::Path;

use arrow::datatypes::SchemaRef;
use sdg_operators::{
    OpError, Operator, chunk, dedup, evol_instruct, filter, generate, project, rewrite, sample, score, self_instruct,
    translate, vote,
};

use crate::config::de::{self, Diagnostic};
use crate::config::yaml::Node;
use crate::config::{GenerateNode, decode_chunk, decode_generate, decode_ingest, decode_passages};
use crate::io::hub_source::HubSourceSpec;
use crate::io::ingest::IngestSpec;
use crate::io::passages_source::PassagesSpec;
use crate::io::sink::SinkSpec;

/// What a node of a kind is in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Makes rows; takes no input.
    Source,
    /// Rows in, rows (and rejects) out: an [`Operator`].
    Transform,
    /// Writes rows into the run directory.
    Sink,
}

/// What decoding a node's settings needs besides the settings themselves.
pub struct DecodeContext<'a> {
    /// The whole node as written (for positions of keys the decoder reads itself).
    pub item: &'a Node,
    /// Key path of the node (`nodes[2]`).
    pub path: &'a str,
    /// Relative paths in the config are resolved against this folder.
    pub base_dir: &'a Path,
}

/// What a node's settings build into.
pub enum Built {
    /// A source, with the schema of the rows it makes.
    Source(SchemaRef),
    /// A transform or a sink's projection.
    Operator(Box<dyn Operator>),
}

/// One row of the table of kinds.
pub struct Kind {
    pub name: &'static str,
    /// One line for `sdg kinds`, the README and the UI.
    pub summary: &'static str,
    pub role: Role,
    /// A complete config that uses the kind. Paths are relative to the repository's `configs/` folder and
    /// model endpoints point at `http://127.0.0.1:8000/v1` (`tests/kinds.rs` runs it against the test
    /// server).
    pub example: &'static str,
    decode: fn(&Node, &DecodeContext, &mut Vec<Diagnostic>) -> Option<crate::config::NodeSpec>,
}

impl Kind {
    /// Decodes a node's settings (the node's keys less `id`, `kind`, `input`) into its typed spec.
    pub fn decode(
        &self,
        settings: &Node,
        context: &DecodeContext,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<crate::config::NodeSpec> {
        (self.decode)(settings, context, diagnostics)
    }

    /// The shape the operator of this kind's example declares (`None` for sources and sinks, or when the
    /// example does not decode).
    pub fn example_shape(&self) -> Option<sdg_operators::Shape> {
        let origin = Path::new("<example>");
        let (config, _) = crate::config::Config::parse(self.example, origin, Path::new("configs")).ok()?;
        let node = config.nodes.iter().find(|n| n.kind == self.name)?;
        if self.role != Role::Transform {
            return None;
        }
        match node.spec.as_ref()?.build().ok()? {
            Built::Operator(op) => Some(op.shape()),
            Built::Source(_) => None,
        }
    }
}

/// The kind named `name`.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Every kind's name, in table order.
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// Settings decoded as written, with serde (unknown keys are errors).
fn decode_plain<T: serde::de::DeserializeOwned>(
    settings: &Node,
    context: &DecodeContext,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    de::decode::<T>(settings, context.path, diagnostics)
}

/// A transform's operator, built from its settings.
fn operator<O: Operator + 'static>(built: Result<O, OpError>) -> Result<Built, String> {
    built.map(|op| Built::Operator(Box::new(op))).map_err(|e| e.to_string())
}

/// Declares the table: each line is `name => Variant(SpecType), role, summary, example, build[, decode]`.
/// `build` turns a `&SpecType` into a [`Built`]; `decode` (default: plain serde) reads the settings.
macro_rules! node_kinds {
    (@decode $spec:ty) => { decode_plain::<$spec> };
    (@decode $spec:ty, $decode:expr) => { $decode };
    ($(
        $name:literal => $variant:ident($spec:ty), $role:ident, $summary:literal,
        example: $example:expr, build: $build:expr $(, decode: $decode:expr)? ;
    )*) => {
        /// The typed settings of one node, by kind (one variant per line of the table).
        #[derive(Debug, Clone, PartialEq)]
        pub enum NodeSpec {
            $( $variant($spec), )*
        }

        /// The table of kinds.
        pub static KINDS: &[Kind] = &[
            $( Kind {
                name: $name,
                summary: $summary,
                role: Role::$role,
                example: $example,
                decode: |settings, context, diagnostics| {
                    let decode = node_kinds!(@decode $spec $(, $decode)?);
                    decode(settings, context, diagnostics).map(NodeSpec::$variant)
                },
            }, )*
        ];

        impl NodeSpec {
            /// The kind's name.
            pub fn kind(&self) -> &'static str {
                match self { $( NodeSpec::$variant(_) => $name, )* }
            }

            /// What these settings build into: a source's schema or an operator.
            pub fn build(&self) -> Result<Built, String> {
                match self { $( NodeSpec::$variant(spec) => {
                    let build: fn(&$spec) -> Result<Built, String> = $build;
                    build(spec)
                } )* }
            }
        }
    };
}

node_kinds! {
    "ingest" => Ingest(IngestSpec), Source, "Reads files (txt, md, html, pdf, docx, csv, jsonl, parquet) into rows.",
        example: crate::io::ingest::EXAMPLE, build: |s| Ok(Built::Source(s.schema())), decode: decode_ingest;
    "hub" => Hub(HubSourceSpec), Source, "Rows sampled from Hugging Face Hub datasets, searched and judged.",
        example: crate::io::hub_source::EXAMPLE, build: |s| Ok(Built::Source(s.ingest(Path::new(".")).schema()));
    "passages" => Passages(PassagesSpec), Source, "Corpus chunks retrieved (BM25, dense or hybrid) for queries.",
        example: crate::io::passages_source::EXAMPLE,
        build: |s| Ok(Built::Source(s.ingest(Path::new(".")).schema())), decode: decode_passages;
    "chunk" => Chunk(chunk::ChunkSpec), Transform, "Splits text into token-bounded chunks with overlap.",
        example: chunk::EXAMPLE, build: |s| operator(chunk::Chunker::new(s.clone())), decode: decode_chunk;
    "filter" => Filter(filter::FilterSpec), Transform, "Keeps rows that pass rules (length, language, regex, ...).",
        example: filter::EXAMPLE, build: |s| operator(filter::RowFilter::new(s.clone()));
    "dedup" => Dedup(dedup::DedupSpec), Transform, "Drops exact and near (MinHash) duplicates across the run.",
        example: dedup::EXAMPLE, build: |s| operator(dedup::Dedup::new(s.clone()));
    "sample" => Sample(sample::SampleSpec), Transform, "Keeps a seeded random (Bernoulli) sample of rows, the same whatever the workers.",
        example: sample::EXAMPLE, build: |s| operator(sample::Sampler::new(s.clone()));
    "generate" => Generate(GenerateNode), Transform, "Asks a model for text or JSON rows from a prompt template.",
        example: generate::EXAMPLE,
        build: |g| operator(generate::Generate::new(g.spec.clone(), g.demos.clone())), decode: decode_generate;
    "vote" => Vote(vote::VoteSpec), Transform, "Keeps a row when n sampled answers agree (with the reference).",
        example: vote::EXAMPLE, build: |s| operator(vote::Vote::new(s.clone()));
    "score" => Score(score::ScoreSpec), Transform, "A target model's pass@k sorts rows into solved/learnable/unsolved.",
        example: score::EXAMPLE, build: |s| operator(score::Score::new(s.clone()));
    "rewrite" => Rewrite(Box<rewrite::RewriteSpec>), Transform, "Rewrites questions harder or easier, re-verified.",
        example: rewrite::EXAMPLE, build: |s| operator(rewrite::Rewrite::new(s.as_ref().clone()));
    "translate" => Translate(translate::TranslateSpec), Transform, "Translates columns, with a quality gate.",
        example: translate::EXAMPLE, build: |s| operator(translate::Translate::new(s.clone()));
    "evol_instruct" => EvolInstruct(evol_instruct::EvolInstructSpec), Transform,
        "Evolves instructions deeper or broader (Evol-Instruct).",
        example: evol_instruct::EXAMPLE, build: |s| operator(evol_instruct::EvolInstruct::new(s.clone()));
    "self_instruct" => SelfInstruct(self_instruct::SelfInstructSpec), Transform,
        "Grows a pool of new instructions from seeds (Self-Instruct).",
        example: self_instruct::EXAMPLE, build: |s| operator(self_instruct::SelfInstruct::new(s.clone()));
    "sink" => Sink(SinkSpec), Sink, "Writes rows as Parquet or JSONL parts, committed atomically.",
        example: crate::io::sink::EXAMPLE,
        build: |s| Ok(Built::Operator(Box::new(project::Project::new(s.project()))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let names = names();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} twice");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
        }
        assert!(find("vote").is_some_and(|k| k.role == Role::Transform));
        assert!(find("nope").is_none());
    }
}

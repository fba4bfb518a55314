//! The `task:` preset: a one-section recipe that expands into a full graph, so the common case needs no
//! hand-written nodes. `sdg plan --eject` writes the expansion out as an editable graph config.
//!
//! ```yaml
//! task:
//!   name: gsm8k-style
//!   domain: mathematics
//!   instruction: Generate a grade-school math word problem that needs multi-step reasoning.
//!   output_instruction: Reason step by step.
//!   answer: {marker: "####"}
//!   demos: demos.jsonl
//!   source: local
//!   local: {paths: [corpus]}
//!   verify: {vote: {n: 8}, score: {model: student, k: 8}, rewrite: {rounds: 2}, translate: {languages: [ar]}}
//! models: {teacher: ..., student: ...}
//! ```
//! User text (instructions, domain) is inserted into prompt templates inside `{% raw %}` blocks, so braces in
//! it are never read as template syntax.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::yaml::{Node, Value};

/// The `task:` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub domain: Option<String>,
    /// What to generate.
    pub instruction: String,
    /// How the question (input) should look.
    #[serde(default)]
    pub input_instruction: Option<String>,
    /// How the answer (output) should look.
    #[serde(default)]
    pub output_instruction: Option<String>,
    /// Where the final answer is in a response (kept as written; checked by the nodes it lands in).
    #[serde(default)]
    pub answer: Option<serde_json::Value>,
    /// Few-shot examples (JSONL with `question` and `answer`).
    #[serde(default)]
    pub demos: Option<PathBuf>,
    /// Records wanted after every filter. Generation is sized from it; see the README for what is exact.
    pub num_samples: usize,
    pub source: Source,
    #[serde(default)]
    pub local: Option<LocalSource>,
    #[serde(default)]
    pub distill: Option<DistillSource>,
    #[serde(default)]
    pub web: Option<WebSource>,
    #[serde(default)]
    pub verify: Verify,
    /// The endpoint that writes (default `teacher`).
    #[serde(default = "default_teacher")]
    pub teacher: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Output format of the sink (default parquet).
    #[serde(default)]
    pub format: Option<String>,
}

fn default_teacher() -> String {
    "teacher".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Local,
    Web,
    Distill,
}

/// `local:` documents to ground the questions in.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalSource {
    pub paths: Vec<PathBuf>,
    /// Chunk size in characters (or tokens with `tokenizer`).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
    #[serde(default = "default_overlap")]
    pub overlap: usize,
    /// Questions asked per passage.
    #[serde(default = "default_per_passage")]
    pub per_passage: u32,
    /// Shortest passage worth asking about, in characters.
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Retrieve only the passages relevant to these queries (BM25, or hybrid with `embedder`); all passages
    /// when empty.
    #[serde(default)]
    pub queries: Vec<String>,
    /// Have the teacher write this many retrieval queries from the task (with the domain as keywords).
    #[serde(default)]
    pub extract_queries: Option<usize>,
    /// A local embedder for dense and hybrid retrieval.
    #[serde(default)]
    pub embedder: Option<String>,
    /// `{mode, top_k, min_bm25, min_similarity}` (see the `passages` node).
    #[serde(default)]
    pub retrieval: Option<serde_json::Value>,
}

fn default_chunk() -> usize {
    1200
}

fn default_overlap() -> usize {
    120
}

fn default_per_passage() -> u32 {
    1
}

fn default_min_chars() -> usize {
    200
}

/// `web:` rows sampled from Hugging Face Hub datasets; the answers are ground truth and stay verbatim.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSource {
    /// Dataset ids; when empty, `search` finds them (the task's domain or name by default).
    #[serde(default)]
    pub datasets: Vec<String>,
    #[serde(default)]
    pub search: Option<String>,
    /// The dataset's question and answer fields.
    #[serde(default = "default_question_field")]
    pub question: String,
    #[serde(default = "default_answer_field")]
    pub answer: String,
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    /// Rows drawn per record wanted, to cover what verification drops.
    #[serde(default = "default_overgenerate")]
    pub oversample: f64,
    /// The teacher judges each dataset from a few rows (relevance and quality, 0 to 10) and names its question
    /// and answer fields, which then replace `question` / `answer` for that dataset.
    #[serde(default)]
    pub judge: Option<WebJudge>,
    /// The teacher rewrites each question in the task's style (`input_instruction`, else `instruction`),
    /// keeping its facts; the original stays in `text` and the answer is never touched.
    #[serde(default)]
    pub reformat: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebJudge {
    #[serde(default = "default_min_score")]
    pub min_score: f64,
}

fn default_min_score() -> f64 {
    6.0
}

fn default_question_field() -> String {
    "question".into()
}

fn default_answer_field() -> String {
    "answer".into()
}

/// `distill:` batches of new examples written by the teacher from the demos.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistillSource {
    /// Examples asked per call.
    #[serde(default = "default_per_call")]
    pub per_call: u32,
    /// Candidates generated per record wanted, to cover what dedup and verification drop.
    #[serde(default = "default_overgenerate")]
    pub overgenerate: f64,
    /// Near-duplicate threshold (MinHash Jaccard) over the questions.
    #[serde(default = "default_near")]
    pub near_duplicate: f64,
    /// Evol-Instruct rounds over the new questions (in-depth and in-breadth); the teacher then answers the
    /// evolved question. Rows whose every round failed are dropped. 0: no evolution.
    #[serde(default)]
    pub evolve: u32,
}

impl Default for DistillSource {
    fn default() -> Self {
        DistillSource {
            per_call: default_per_call(),
            overgenerate: default_overgenerate(),
            near_duplicate: default_near(),
            evolve: 0,
        }
    }
}

fn default_per_call() -> u32 {
    5
}

fn default_overgenerate() -> f64 {
    1.5
}

fn default_near() -> f64 {
    0.8
}

/// `verify:` which checks run, in this order.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    #[serde(default)]
    pub vote: Option<VerifyVote>,
    #[serde(default)]
    pub score: Option<VerifyScore>,
    #[serde(default)]
    pub rewrite: Option<VerifyRewrite>,
    #[serde(default)]
    pub translate: Option<VerifyTranslate>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyVote {
    #[serde(default = "default_vote_n")]
    pub n: u32,
    /// Default: the teacher.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub min_agreement: Option<f64>,
    /// The vote's answer must match the generator's own answer (default true): two independent routes to
    /// the same answer.
    #[serde(default = "default_true")]
    pub match_generated: bool,
}

fn default_true() -> bool {
    true
}

fn default_vote_n() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyScore {
    #[serde(default = "default_student")]
    pub model: String,
    #[serde(default = "default_k")]
    pub k: u32,
}

fn default_student() -> String {
    "student".into()
}

fn default_k() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyRewrite {
    #[serde(default = "default_rounds")]
    pub rounds: u32,
}

fn default_rounds() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyTranslate {
    pub languages: Vec<String>,
    #[serde(default)]
    pub model: Option<String>,
}

/// Why a task cannot be expanded (reported at the `task` key).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PresetError {
    pub key: String,
    pub message: String,
}

fn problem(key: &str, message: impl Into<String>) -> PresetError {
    PresetError { key: key.to_string(), message: message.into() }
}

/// User text inside a template, never interpreted as template syntax.
fn raw(text: &str) -> String {
    format!("{{% raw %}}{}{{% endraw %}}", text.replace("{% endraw %}", "{ % endraw % }"))
}

/// The answer-format sentence the prompts use, matching the task's extractor.
fn answer_format(answer: &Json) -> String {
    if let Some(marker) = answer.get("marker").and_then(Json::as_str) {
        return format!("End with the final answer on its own line as: {} <answer>", raw(marker));
    }
    if let Some(tag) = answer.get("tag").and_then(Json::as_str) {
        return format!("Put the final answer inside <{0}></{0}> tags.", raw(tag));
    }
    if answer.as_str() == Some("boxed") {
        return "Put the final answer in \\boxed{}.".to_string();
    }
    "End with the final answer on its own line as: #### <answer>".to_string()
}

/// The graph a task expands to, as the `nodes:` list (JSON values, emitted as YAML by the caller).
/// `demo_count` is the number of demos in the task's demos file (the distill source sizes its calls by it).
/// `scale` (1 on the first attempt) multiplies what the web and distill sources draw, for top-up attempts.
pub fn expand(task: &TaskSpec, demo_count: usize, scale: f64) -> Result<Vec<Json>, PresetError> {
    if task.num_samples == 0 {
        return Err(problem("num_samples", "must be at least 1"));
    }
    let answer = task.answer.clone().unwrap_or_else(|| json!({"marker": "####"}));
    // A web dataset's answer column: the reference, never overwritten by the vote.
    let mut ground_truth: Option<String> = None;
    let format = answer_format(&answer);
    let mut nodes = Vec::new();
    let domain = task.domain.as_deref().map(|d| format!(" about {}", raw(d))).unwrap_or_default();
    let mut system = format!("You write high-quality training data{domain}. Task: {}", raw(&task.instruction));
    if let Some(input) = &task.input_instruction {
        system.push_str(&format!("\nThe question: {}", raw(input)));
    }
    if let Some(output) = &task.output_instruction {
        system.push_str(&format!("\nThe answer: {}", raw(output)));
    }
    let demos_block =
        "{% for d in demos %}Example question: {{ d.question }}\nExample answer: {{ d.answer }}\n\n{% endfor %}";
    let last = match task.source {
        Source::Local => {
            let local =
                task.local.as_ref().ok_or_else(|| problem("local", "`source: local` needs `local: {paths: [...]}`"))?;
            if local.paths.is_empty() {
                return Err(problem("local.paths", "name at least one file or folder"));
            }
            if local.queries.is_empty() && local.extract_queries.is_none() {
                nodes.push(json!({"id": "docs", "kind": "ingest", "paths": local.paths}));
                nodes.push(json!({"id": "chunks", "kind": "chunk", "input": "docs", "max_tokens": local.chunk, "overlap": local.overlap}));
            } else {
                let mut retrieve = json!({"id": "chunks", "kind": "passages", "paths": local.paths, "queries": local.queries,
                    "chunk": {"max_tokens": local.chunk, "overlap": local.overlap}});
                if let Some(embedder) = &local.embedder {
                    retrieve["embedder"] = json!(embedder);
                }
                if let Some(count) = local.extract_queries {
                    let topic = match &task.domain {
                        Some(domain) => format!("{} (domain: {domain})", task.instruction),
                        None => task.instruction.clone(),
                    };
                    retrieve["extract"] = json!({"model": task.teacher, "count": count, "topic": topic,
                        "keywords": task.domain.iter().collect::<Vec<_>>()});
                }
                if let Some(settings) = &local.retrieval {
                    retrieve["retrieval"] = settings.clone();
                }
                nodes.push(retrieve);
            }
            nodes.push(json!({"id": "passages", "kind": "filter", "input": "chunks",
                "where": {"len": {"column": "text", "min": local.min_chars}}}));
            nodes.push(json!({"id": "unique", "kind": "dedup", "input": "passages", "near": {"threshold": 0.8}}));
            let prompt = format!(
                "{demos_block}Passage:\n{{{{ text }}}}\n\nWrite one question that this passage answers, and its answer \
                 grounded in the passage. {format}\nReply with JSON only: {{\"question\": \"...\", \"answer\": \"...\"}}"
            );
            let mut generate = json!({
                "id": "qa", "kind": "generate", "input": "unique", "model": task.teacher,
                "system": system, "prompt": prompt, "n": local.per_passage, "temperature": 0.7,
                "output": {"json": {"columns": ["question", "answer"]}},
                "json_schema": {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                                "required": ["question", "answer"], "additionalProperties": false},
            });
            if let Some(demos) = &task.demos {
                generate["demos"] = json!(demos);
                // Two demos per prompt, or as many as there are.
                generate["demos_k"] = json!(demo_count.clamp(1, 2));
            }
            if let Some(seed) = task.seed {
                generate["seed"] = json!(seed);
            }
            nodes.push(generate);
            // Structured output guarantees the shape, not the substance: an empty question is dropped here.
            nodes.push(json!({"id": "formed", "kind": "filter", "input": "qa", "where": {"all": [
                {"len": {"column": "question", "min": 10}}, {"len": {"column": "answer", "min": 1}}]}}));
            "formed".to_string()
        }
        Source::Web => {
            let web = task.web.as_ref().ok_or_else(|| {
                problem("web", "`source: web` needs `web: {datasets: [...]}` or `web: {search: ...}`")
            })?;
            if web.oversample.is_nan() || web.oversample < 1.0 {
                return Err(problem("web.oversample", "must be at least 1"));
            }
            let search = match (&web.search, web.datasets.is_empty()) {
                (Some(words), _) => Some(words.clone()),
                (None, true) => Some(task.domain.clone().unwrap_or_else(|| task.name.clone())),
                (None, false) => None,
            };
            let rows = (task.num_samples as f64 * web.oversample * scale).ceil() as u64;
            let mut hub = json!({
                "id": "rows", "kind": "hub", "datasets": web.datasets, "rows": rows, "seed": task.seed.unwrap_or(0),
                "fields": {"text": web.question, "keep": [web.question, web.answer]},
            });
            if let Some(search) = search {
                hub["search"] = json!(search);
            }
            if let Some(splits) = &web.splits {
                hub["splits"] = json!(splits);
            }
            if let Some(judge) = &web.judge {
                let topic = match &task.domain {
                    Some(domain) => format!("{} (domain: {domain})", task.instruction),
                    None => task.instruction.clone(),
                };
                hub["judge"] = json!({"model": task.teacher, "topic": topic, "min_score": judge.min_score});
            }
            nodes.push(hub);
            ground_truth = Some(web.answer.clone());
            if web.reformat {
                let style = task.input_instruction.as_deref().unwrap_or(&task.instruction);
                let mut reformat = json!({"id": "reformatted", "kind": "generate", "input": "rows",
                    "model": task.teacher, "system": system,
                    "prompt": format!("Rewrite this question in the style the task asks for: {}\nKeep every fact, number \
                        and condition, and do not answer it. Reply with the rewritten question only.\n\n\
                        Question: {{{{ {} }}}}", raw(style), web.question),
                    "temperature": 0.3,
                    // Only the question column is written: the dataset's answer stays the ground truth.
                    "output": {"text": {"column": web.question}}});
                if let Some(seed) = task.seed {
                    reformat["seed"] = json!(seed);
                }
                nodes.push(reformat);
                "reformatted".to_string()
            } else {
                "rows".to_string()
            }
        }
        Source::Distill => {
            // Each demo is a slot: the teacher writes `per_call` new examples in its style per sample, with
            // other demos rotated in as few-shot context; near-duplicates are removed before verification.
            let Some(demos) = &task.demos else {
                return Err(problem(
                    "demos",
                    "`source: distill` needs `demos` (a JSONL file of examples) to start from",
                ));
            };
            let distill = task.distill.clone().unwrap_or_default();
            if distill.per_call == 0 || distill.overgenerate.is_nan() || distill.overgenerate < 1.0 {
                return Err(problem("distill", "needs per_call >= 1 and overgenerate >= 1"));
            }
            // Calls per demo so that all demos together ask for num_samples x overgenerate examples.
            let wanted = (task.num_samples as f64 * distill.overgenerate * scale).ceil() as u64;
            let per_demo = u64::from(distill.per_call) * demo_count.max(1) as u64;
            let calls = wanted.div_ceil(per_demo).max(1);
            nodes.push(json!({"id": "seeds", "kind": "ingest", "paths": [demos], "fields": {"text": "question", "keep": ["answer"]}}));
            let prompt = format!(
                "{demos_block}Here is one example of the data we need:\nQuestion: {{{{ text }}}}\nAnswer: {{{{ answer }}}}\n\n\
                 Write {} new, different examples of the same kind (new topics, new numbers, varied wording). {format}\n\
                 Reply with JSON only: {{\"examples\": [{{\"question\": \"...\", \"answer\": \"...\"}}]}}",
                distill.per_call
            );
            let mut generate = json!({
                "id": "qa", "kind": "generate", "input": "seeds", "model": task.teacher,
                "system": system, "prompt": prompt, "n": calls, "temperature": 0.9,
                "demos": demos, "demos_k": demo_count.clamp(1, 2),
                "output": {"json_list": {"columns": ["question", "answer"]}},
                // Each call cached alone: a larger num_samples adds calls and reuses the earlier ones.
                "request_per_sample": true,
            });
            if let Some(seed) = task.seed {
                generate["seed"] = json!(seed);
            }
            nodes.push(generate);
            nodes.push(json!({"id": "fresh", "kind": "dedup", "input": "qa", "column": "question",
                "near": {"threshold": distill.near_duplicate}}));
            if distill.evolve == 0 {
                "fresh".to_string()
            } else {
                // Evol-Instruct: each question is made deeper or broader for `evolve` rounds (failed rounds
                // eliminated, rows with no success dropped), and the old answer no longer fits: the teacher
                // answers the evolved question.
                let mut evolve = json!({"id": "evolved", "kind": "evol_instruct", "input": "fresh",
                    "model": task.teacher, "column": "question", "generations": distill.evolve,
                    "on_no_evolution": "reject"});
                let mut answer = json!({"id": "answered", "kind": "generate", "input": "evolved",
                    "model": task.teacher, "system": system,
                    "prompt": format!("{{{{ question }}}}\n\nSolve it step by step. {format}"),
                    "output": {"text": {"column": "answer"}}});
                if let Some(seed) = task.seed {
                    evolve["seed"] = json!(seed);
                    answer["seed"] = json!(seed);
                }
                nodes.push(evolve);
                nodes.push(answer);
                "answered".to_string()
            }
        }
    };
    let mut last = last;
    let question_column = match (&task.web, task.source) {
        (Some(web), Source::Web) => web.question.as_str(),
        _ => "question",
    };
    let question_prompt = format!("{{{{ {question_column} }}}}\n\nSolve it step by step. {format}");
    let vote_model = task.verify.vote.as_ref().and_then(|v| v.model.clone()).unwrap_or_else(|| task.teacher.clone());
    let vote_settings = |n: u32, min_agreement: Option<f64>| {
        let mut vote = json!({"model": vote_model, "prompt": question_prompt, "n": n, "answer": answer});
        if let Some(min) = min_agreement {
            vote["min_agreement"] = json!(min);
        }
        if let Some(seed) = task.seed {
            vote["seed"] = json!(seed);
        }
        vote
    };
    if let Some(vote) = &task.verify.vote {
        let mut node = vote_settings(vote.n, vote.min_agreement);
        let object = node.as_object_mut().expect("object");
        object.insert("id".into(), json!("verified"));
        object.insert("kind".into(), json!("vote"));
        object.insert("input".into(), json!(last));
        if vote.match_generated {
            object.insert("expected".into(), json!(ground_truth.as_deref().unwrap_or("answer")));
        }
        if ground_truth.is_some() {
            // The vote's own answer goes beside the ground truth, not over it.
            object.insert("columns".into(), json!({"answer": "vote_answer"}));
        }
        nodes.push(node);
        last = "verified".into();
    }
    let score_settings = |score: &VerifyScore| {
        let mut settings = json!({"model": score.model, "prompt": question_prompt, "k": score.k, "answer": answer, "keep_answers": true});
        if let Some(truth) = &ground_truth {
            settings["reference"] = json!(truth);
        }
        if let Some(seed) = task.seed {
            settings["seed"] = json!(seed);
        }
        settings
    };
    if let Some(score) = &task.verify.score {
        let mut node = score_settings(score);
        let object = node.as_object_mut().expect("object");
        object.insert("id".into(), json!("scored"));
        object.insert("kind".into(), json!("score"));
        object.insert("input".into(), json!(last));
        nodes.push(node);
        last = "scored".into();
    }
    if let Some(rewrite) = &task.verify.rewrite {
        let (Some(vote), Some(score)) = (&task.verify.vote, &task.verify.score) else {
            return Err(problem(
                "verify.rewrite",
                "needs `verify.vote` and `verify.score`: rewrites are re-verified and re-scored",
            ));
        };
        let mut node = json!({
            "id": "balanced", "kind": "rewrite", "input": last, "model": task.teacher, "rounds": rewrite.rounds,
            "vote": vote_settings(vote.n, vote.min_agreement), "score": score_settings(score),
        });
        if let Some(seed) = task.seed {
            node["seed"] = json!(seed);
        }
        nodes.push(node);
        last = "balanced".into();
    }
    if let Some(translate) = &task.verify.translate {
        let columns =
            if task.verify.vote.is_some() { json!(["question", "response"]) } else { json!(["question", "answer"]) };
        nodes.push(json!({
            "id": "multilingual", "kind": "translate", "input": last,
            "model": translate.model.clone().unwrap_or_else(|| task.teacher.clone()),
            "columns": columns, "languages": translate.languages,
        }));
        last = "multilingual".into();
    }
    let mut sink = json!({"id": "out", "kind": "sink", "input": last});
    if let Some(format) = &task.format {
        sink["format"] = json!(format);
    }
    nodes.push(sink);
    Ok(nodes)
}

/// A YAML tree as JSON (plain scalars become numbers, booleans or null where they read as such).
pub fn to_json(node: &Node) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Scalar { text, plain: false } => Json::String(text.clone()),
        Value::Scalar { text, plain: true } => match text.as_str() {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            "null" | "~" => Json::Null,
            _ => text
                .parse::<i64>()
                .map(Json::from)
                .or_else(|_| text.parse::<f64>().map(Json::from))
                .unwrap_or_else(|_| Json::String(text.clone())),
        },
        Value::Seq(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            Json::Object(entries.iter().filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), to_json(v)))).collect())
        }
    }
}

/// JSON as YAML text (block style; multi-line strings as literal blocks).
pub fn to_yaml(value: &Json) -> String {
    fn convert(value: &Json) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match value {
            Json::Null => Yaml::Null,
            Json::Bool(b) => Yaml::Boolean(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Json::String(s) => Yaml::String(s.clone()),
            Json::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
            Json::Object(map) => Yaml::Hash(map.iter().map(|(k, v)| (Yaml::String(k.clone()), convert(v))).collect()),
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Writing to a String cannot fail.
    let _ = emitter.dump(&convert(value));
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_string();
    body + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: Json) -> TaskSpec {
        let mut base = json!({
            "name": "t", "instruction": "Write {{ tricky }} math problems.", "num_samples": 10, "source": "local",
            "local": {"paths": ["corpus"]},
        });
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn local_task_expands_into_the_verified_chain() {
        let nodes = expand(&task(json!({
            "verify": {"vote": {"n": 4}, "score": {"k": 4}, "rewrite": {"rounds": 1}, "translate": {"languages": ["fr"]}},
            "seed": 9,
        })), 0, 1.0)
        .unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "docs",
                "chunks",
                "passages",
                "unique",
                "qa",
                "formed",
                "verified",
                "scored",
                "balanced",
                "multilingual",
                "out"
            ]
        );
        assert_eq!(nodes[5]["input"], "qa");
        assert_eq!(nodes[6]["expected"], "answer");
        assert_eq!(nodes[7]["model"], "student");
        assert_eq!(nodes[8]["vote"]["n"], 4);
        assert!(
            nodes[4]["system"].as_str().unwrap().contains("{% raw %}Write {{ tricky }} math problems.{% endraw %}")
        );
        assert!(nodes[4]["prompt"].as_str().unwrap().contains("{% raw %}####{% endraw %} <answer>"));
    }

    #[test]
    fn distill_task_sizes_its_calls_by_the_demos() {
        let spec = task(json!({"source": "distill", "local": null, "demos": "demos.jsonl", "num_samples": 30,
            "distill": {"per_call": 5, "overgenerate": 2.0}}));
        let nodes = expand(&spec, 3, 1.0).unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["seeds", "qa", "fresh", "out"]);
        // 30 x 2 = 60 examples from 3 demos at 5 per call: 4 calls per demo.
        assert_eq!(nodes[1]["n"], 4);
        assert_eq!(nodes[1]["output"]["json_list"]["columns"], json!(["question", "answer"]));
        let err = expand(&task(json!({"source": "distill"})), 0, 1.0).unwrap_err();
        assert_eq!(err.key, "demos");
        // Evol-Instruct: the new questions evolve, then the teacher answers the evolved ones.
        let spec = task(json!({"source": "distill", "local": null, "demos": "demos.jsonl", "num_samples": 30,
            "distill": {"evolve": 2}, "verify": {"vote": {"n": 4}}}));
        let nodes = expand(&spec, 3, 1.0).unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["seeds", "qa", "fresh", "evolved", "answered", "verified", "out"]);
        assert_eq!((nodes[3]["generations"].as_u64(), nodes[3]["on_no_evolution"].as_str()), (Some(2), Some("reject")));
        assert_eq!(nodes[4]["output"]["text"]["column"], "answer");
        assert_eq!(nodes[5]["input"], "answered");
    }

    #[test]
    fn web_task_can_reformat_questions_without_touching_answers() {
        let spec = task(json!({"source": "web", "local": null, "num_samples": 4, "input_instruction": "One line.",
            "web": {"datasets": ["acme/sums"], "question": "problem", "answer": "solution", "reformat": true}}));
        let nodes = expand(&spec, 0, 1.0).unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["rows", "reformatted", "out"]);
        assert_eq!(nodes[1]["output"], json!({"text": {"column": "problem"}}));
        let prompt = nodes[1]["prompt"].as_str().unwrap();
        assert!(
            prompt.contains("{% raw %}One line.{% endraw %}") && prompt.ends_with("Question: {{ problem }}"),
            "{prompt}"
        );
    }

    #[test]
    fn web_task_keeps_the_ground_truth_beside_the_vote() {
        let spec = task(json!({"source": "web", "local": null, "num_samples": 10,
            "web": {"datasets": ["acme/sums"], "answer": "solution"},
            "verify": {"vote": {"n": 4}, "score": {"k": 4}}}));
        let nodes = expand(&spec, 0, 1.0).unwrap();
        assert_eq!(nodes[0]["kind"], "hub");
        assert_eq!(nodes[0]["rows"], 15);
        assert_eq!(nodes[0]["fields"]["keep"], json!(["question", "solution"]));
        assert_eq!(nodes[1]["expected"], "solution");
        assert_eq!(nodes[1]["columns"]["answer"], "vote_answer");
        assert_eq!(nodes[2]["reference"], "solution");
        let searched = expand(&task(json!({"source": "web", "web": {}, "domain": "chemistry"})), 0, 1.0).unwrap();
        assert_eq!(searched[0]["search"], "chemistry");
        assert_eq!(expand(&task(json!({"source": "web"})), 0, 1.0).unwrap_err().key, "web");
    }

    #[test]
    fn impossible_tasks_are_refused_with_the_key() {
        let err = expand(&task(json!({"verify": {"rewrite": {}}})), 0, 1.0).unwrap_err();
        assert_eq!(err.key, "verify.rewrite");
        let err = expand(&task(json!({"local": null})), 0, 1.0).unwrap_err();
        assert_eq!(err.key, "local");
        let err = expand(&task(json!({"num_samples": 0})), 0, 1.0).unwrap_err();
        assert_eq!(err.key, "num_samples");
    }

    #[test]
    fn yaml_round_trips_through_the_config_parser() {
        let value =
            json!({"nodes": [{"id": "a", "prompt": "line one\n{{ x }}: \"q\"", "n": 3, "t": 0.5, "flag": true}]});
        let text = to_yaml(&value);
        let parsed = super::super::yaml::parse(&text).unwrap();
        assert_eq!(to_json(&parsed), value, "{text}");
    }
}

//! Local models on real weights: SmolLM2-135M (llama, byte-level BPE), Gemma 3 270M (SentencePiece) and
//! all-MiniLM-L6-v2, fetched into the model store on first use. Reference ids come from llama.cpp
//! (`benches/llamacpp_golden.py`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use candle_core::quantized::gguf_file;
use serde_json::Value;

use sdg::models::local::candle_transformer::CandleTransformer;
use sdg::models::local::embed::{Embedder, cosine};
use sdg::models::local::tokenizer::TextTokenizer;
use sdg::models::local::transformer::{Decoder, Row, Transformer};
use sdg::models::local::{Backend, LlmOptions, LocalLlm};
use sdg::testkit::catalog_model;
use sdg_operators::model::{ChatMessage, Prompt, Sampling};

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn messages(value: &Value) -> Vec<ChatMessage> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn smollm2() -> LocalLlm {
    LocalLlm::load(&catalog_model("smollm2-135m-instruct"), &LlmOptions { max_batch: 8, ..Default::default() }).unwrap()
}

#[test]
fn smollm2_chat_template_renders_and_tokenizes_as_llama_cpp() {
    let llm = smollm2();
    let reference = golden("smollm2_chat.json");
    for case in reference["cases"].as_array().unwrap() {
        let messages = messages(&case["messages"]);
        assert_eq!(llm.render_chat(&messages).unwrap(), case["rendered"].as_str().unwrap());
        assert_eq!(llm.prompt_ids(&Prompt::Chat(messages)).unwrap(), ids(&case["ids"]));
    }
    for plain in reference["plain"].as_array().unwrap() {
        let text = plain["text"].as_str().unwrap();
        assert_eq!(llm.tokenizer.encode(text, false).unwrap(), ids(&plain["ids"]), "{text:?}");
        assert_eq!(llm.tokenizer.decode(&ids(&plain["ids"])).unwrap(), text);
    }
}

#[test]
fn gemma3_sentencepiece_tokens_match_llama_cpp() {
    let path = catalog_model("gemma3-270m");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let tokenizer = TextTokenizer::load(&content, None).unwrap();
    let reference = golden("gemma3_ids.json");
    for plain in reference["plain"].as_array().unwrap() {
        let text = plain["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text, false).unwrap(), ids(&plain["ids"]), "{text:?}");
        assert_eq!(tokenizer.decode(&ids(&plain["ids"])).unwrap(), text);
    }
    for special in reference["special"].as_array().unwrap() {
        let text = special["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text, true).unwrap(), ids(&special["ids"]), "{text:?}");
    }
    for with_bos in reference["plain_bos"].as_array().unwrap() {
        let mut expected = vec![tokenizer.bos.unwrap()];
        expected.extend(tokenizer.encode(with_bos["text"].as_str().unwrap(), false).unwrap());
        assert!(tokenizer.add_bos);
        assert_eq!(expected, ids(&with_bos["ids"]));
    }
}

#[test]
fn greedy_generation_is_coherent_deterministic_and_batch_independent() {
    let llm = smollm2();
    let reference = golden("smollm2_greedy.json");
    let prompt = Prompt::Chat(messages(&reference["messages"]));
    let prompt_ids = llm.prompt_ids(&prompt).unwrap();
    assert_eq!(prompt_ids, ids(&reference["prompt_ids"]));
    let sampling = Sampling { max_tokens: Some(24), ..Default::default() };
    let first = llm.generate_blocking(prompt_ids.clone(), &sampling, 1).unwrap();
    let text = &first.texts[0];
    println!("greedy: {text:?}");
    // Up to the first near-tie (margin 0.01 logits at step 6) the ids are llama.cpp's.
    assert_eq!(first.tokens[0][..5], ids(&reference["ids"])[..5]);
    assert!(text.to_lowercase().contains("sea"), "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 10 && words.iter().all(|w| w.is_ascii()), "{text}");

    // The same again, and inside a batch of other prompts.
    let again = llm.generate_blocking(prompt_ids.clone(), &sampling, 1).unwrap();
    assert_eq!(again.tokens, first.tokens);
    let others = ["List three colors.", "What is the capital of France?", "Count to five."];
    std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter()
            .map(|q| {
                let ids = llm.prompt_ids(&Prompt::Chat(vec![ChatMessage::new("user", *q)])).unwrap();
                let (llm, sampling) = (&llm, &sampling);
                scope.spawn(move || llm.generate_blocking(ids, sampling, 1).unwrap())
            })
            .collect();
        let batched = llm.generate_blocking(prompt_ids.clone(), &sampling, 1).unwrap();
        assert_eq!(batched.tokens, first.tokens);
        for handle in handles {
            assert!(!handle.join().unwrap().texts[0].is_empty());
        }
    });
}

#[test]
fn teacher_forced_reference_continuation_agrees_with_llama_cpp_at_every_step() {
    let path = catalog_model("smollm2-135m-instruct");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let model = Transformer::load(&content, &mut file, 512, 2).unwrap();
    let reference = golden("smollm2_greedy.json");
    let prompt = ids(&reference["prompt_ids"]);
    let expected = ids(&reference["ids"]);
    let runner_up = ids(&reference["runner_up_ids"]);
    let tokens: Vec<u32> = prompt.iter().chain(&expected[..expected.len() - 1]).copied().collect();
    let rows: Vec<Row> = tokens
        .iter()
        .enumerate()
        .map(|(position, &token)| Row { slot: 0, position, token, logits: position + 1 >= prompt.len() })
        .collect();
    let mut caches = vec![model.new_cache()];
    let logits = model.forward(&rows, &mut caches).unwrap();
    assert_eq!(logits.len(), expected.len());
    for (step, row) in logits.iter().enumerate() {
        let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        assert!(
            best == expected[step] || best == runner_up[step],
            "step {step}: argmax {best}, llama.cpp {} (runner-up {})",
            expected[step],
            runner_up[step]
        );
    }
}

#[test]
fn sampling_is_seeded_and_n_samples_differ() {
    let llm = smollm2();
    let ids = llm.prompt_ids(&Prompt::Chat(vec![ChatMessage::new("user", "Name an animal.")])).unwrap();
    let sampling = Sampling {
        temperature: Some(1.0),
        top_p: Some(0.95),
        top_k: Some(40),
        max_tokens: Some(12),
        seed: Some(7),
        ..Default::default()
    };
    let a = llm.generate_blocking(ids.clone(), &sampling, 4).unwrap();
    let b = llm.generate_blocking(ids.clone(), &sampling, 4).unwrap();
    assert_eq!(a.texts.len(), 4);
    assert_eq!(a.tokens, b.tokens, "same seed, same samples");
    let distinct: BTreeSet<_> = a.tokens.iter().collect();
    assert!(distinct.len() >= 2, "{:?}", a.texts);
    let other = llm.generate_blocking(ids.clone(), &Sampling { seed: Some(8), ..sampling.clone() }, 4).unwrap();
    assert_ne!(other.tokens, a.tokens);
    // Stop strings cut the text and the token budget caps the length.
    let stopped =
        llm.generate_blocking(ids, &Sampling { max_tokens: Some(5), stop: vec![" ".into()], ..sampling }, 1).unwrap();
    assert!(stopped.tokens[0].len() <= 5 && !stopped.texts[0].contains(' '), "{:?}", stopped.texts);
}

/// A JSON schema guides the sampler, so even a 135M model answers with JSON of the requested shape, for
/// every sample of a request and whatever the temperature.
#[test]
fn a_json_schema_makes_the_reply_parse_with_the_requested_keys() {
    let llm = smollm2();
    let schema = serde_json::json!({"type": "object", "properties": {"question": {"type": "string"},
        "answer": {"type": "string"}, "difficulty": {"enum": ["easy", "hard"]}, "steps": {"type": "integer"}}});
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Passage: The Nile flows north through Egypt into the Mediterranean Sea.\nWrite a question about the \
         passage and its answer. Reply with JSON only.",
    )]);
    let ids = llm.prompt_ids(&prompt).unwrap();
    for temperature in [0.0, 0.9] {
        let sampling = Sampling {
            max_tokens: Some(160),
            temperature: Some(temperature),
            seed: Some(3),
            json_schema: Some(schema.clone()),
            ..Default::default()
        };
        let generated = llm.generate_blocking(ids.clone(), &sampling, 3).unwrap();
        for text in &generated.texts {
            println!("t={temperature}: {text}");
            let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
            let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["question", "answer", "difficulty", "steps"], "{text}");
            assert!(["easy", "hard"].contains(&value["difficulty"].as_str().unwrap()), "{text}");
            assert!(value["steps"].is_i64(), "{text}");
            assert!(!value["question"].as_str().unwrap().trim().is_empty(), "{text}");
        }
    }
}

#[test]
fn prompt_longer_than_the_context_is_refused_not_truncated() {
    let llm =
        LocalLlm::load(&catalog_model("smollm2-135m-instruct"), &LlmOptions { context: 64, ..Default::default() })
            .unwrap();
    let long = "word ".repeat(200);
    let error =
        llm.generate_blocking(llm.prompt_ids(&Prompt::Completion(long)).unwrap(), &Sampling::default(), 1).unwrap_err();
    assert!(error.to_string().contains("context holds 64"), "{error}");
}

#[test]
fn minilm_embeddings_separate_paraphrases_from_unrelated_text() {
    let embedder = Embedder::load(&catalog_model("all-minilm-l6-v2")).unwrap();
    let vectors = embedder
        .embed(&[
            "The cat sits on the mat.",
            "A cat is sitting on a mat.",
            "Quarterly revenue rose by 12 percent in Europe.",
        ])
        .unwrap();
    let paraphrase = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    println!("paraphrase {paraphrase:.3}, unrelated {unrelated:.3}");
    assert!(paraphrase > 0.7, "{paraphrase}");
    assert!(unrelated < 0.3, "{unrelated}");
}

#[test]
fn generate_graph_with_a_local_model_writes_parquet_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("tides.txt"), "Tides are caused by the gravity of the Moon and the Sun.").unwrap();
    std::fs::write(corpus.join("bees.txt"), "Bees carry pollen between flowers, which lets plants make seeds.")
        .unwrap();
    let config = dir.path().join("local.yaml");
    std::fs::write(
        &config,
        "models:\n  teacher: {provider: local, model: smollm2-135m-instruct, max_batch: 4}\n\
         nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - id: qa\n    kind: generate\n    input: docs\n    \
         model: teacher\n    prompt: \"Ask one question about this text: {{ text }}\"\n    max_tokens: 24\n    \
         seed: 1\n    output: {text: {column: question}}\n  - {id: out, kind: sink, input: qa}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let status = Command::new(env!("CARGO_BIN_EXE_sdg"))
        .args(["run", config.to_str().unwrap(), "-o", out.to_str().unwrap(), "--cache-dir"])
        .arg(dir.path().join("cache"))
        .status()
        .unwrap();
    assert!(status.success());
    let batches = common::read_parquet_dir(&out.join("data"));
    let questions = common::strings(&batches, "question");
    assert_eq!(questions.len(), 2);
    for question in questions.iter().flatten() {
        println!("question: {question:?}");
        assert!(question.split_whitespace().count() >= 3, "{question}");
    }
    assert!(
        common::strings(&batches, "gen_model").iter().all(|m| m.as_deref() == Some("SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    assert!(common::strings(&batches, "parent_id").iter().all(Option::is_some));
    for batch in &batches {
        let tokens = batch.column_by_name("gen_completion_tokens").unwrap();
        let tokens = tokens.as_any().downcast_ref::<arrow::array::UInt64Array>().unwrap();
        assert!(tokens.iter().all(|t| t.unwrap() > 0));
    }
    let manifest = common::manifest(&out);
    assert_eq!(manifest["models"]["teacher"]["requests"], 2, "{manifest}");
}

/// The quickstart recipe (`configs/quickstart.yaml`, the README's main job) with SmolLM2 in-process, on two
/// short passages so that a debug build runs it in reasonable time: structured question/answer rows with
/// their provenance. (The full sample corpus: `cargo run --release -- run -o out/quickstart`.)
#[test]
fn the_quickstart_recipe_writes_grounded_questions_with_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(
        corpus.join("tides.txt"),
        "Tides are caused by the gravity of the Moon and the Sun pulling on the oceans.",
    )
    .unwrap();
    std::fs::write(
        corpus.join("bees.txt"),
        "Bees carry pollen between flowers, which lets the plants make seeds and fruit.",
    )
    .unwrap();
    let quickstart =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.yaml")).unwrap();
    let recipe = quickstart
        .replace("paths: [sample-corpus]", "paths: [corpus]")
        .replace("min_chars: 120", "min_chars: 40")
        .replace("num_samples: 8", "num_samples: 2");
    assert_ne!(recipe, quickstart);
    std::fs::write(dir.path().join("quickstart.yaml"), recipe).unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_sdg"))
        .current_dir(dir.path())
        .args(["run", "quickstart.yaml", "-o", "out", "--quiet", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let batches = common::read_parquet_dir(&out.join("data"));
    let questions = common::strings(&batches, "question");
    let answers = common::strings(&batches, "answer");
    assert!(!questions.is_empty(), "the recipe writes rows");
    for (question, answer) in questions.iter().zip(&answers) {
        let (question, answer) = (question.as_deref().unwrap(), answer.as_deref().unwrap());
        println!("Q: {question}\nA: {answer}\n");
        assert!(question.chars().count() >= 10 && !answer.is_empty());
    }
    for column in ["source_path", "doc_id", "text", "gen_model", "gen_params"] {
        assert!(common::strings(&batches, column).iter().all(Option::is_some), "{column}");
    }
    let manifest = common::manifest(&out);
    assert_eq!(manifest["status"], "completed");
    assert!(manifest["config"].as_str().unwrap().contains("source: local"), "the recipe is recorded");
}

#[test]
fn gemma3_greedy_completion_matches_llama_cpp_alone_and_in_a_batch() {
    // Gemma 3 270M (a base model): 256-dim heads, four query heads on one key/value head, sliding-window
    // layers, K-quant weights. Reference: llama-cpp-python 0.3.36, greedy, same GGUF.
    let llm =
        LocalLlm::load(&catalog_model("gemma3-270m"), &LlmOptions { max_batch: 4, ..Default::default() }).unwrap();
    let prompt = llm.prompt_ids(&Prompt::Completion("The capital of France is".into())).unwrap();
    assert_eq!(prompt, [2, 818, 5279, 529, 7001, 563]);
    let sampling = Sampling { max_tokens: Some(8), ..Default::default() };
    let alone = llm.generate_blocking(prompt.clone(), &sampling, 1).unwrap();
    println!("gemma3: {:?}", alone.texts[0]);
    assert_eq!(alone.tokens[0], [506, 5279, 529, 506, 2891, 529, 7001, 236761], "{:?}", alone.texts[0]);
    assert_eq!(alone.texts[0], " the capital of the country of France.");
    std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            let ids = llm.prompt_ids(&Prompt::Completion("My favourite colour is".into())).unwrap();
            llm.generate_blocking(ids, &sampling, 1).unwrap()
        });
        let batched = llm.generate_blocking(prompt, &sampling, 1).unwrap();
        assert_eq!(batched.tokens, alone.tokens);
        assert!(!other.join().unwrap().texts[0].is_empty());
    });
}

/// Every logits row of a fixed schedule of forward passes, with its sequence: two sequences, the first
/// prefilled in two chunks (the first beside the second's whole prompt), then both decoded together one token
/// per step, teacher-forced (the first on `continuation`, the second on prompt ids).
fn scheduled_logits<M: Decoder>(model: &M, prompt: &[u32], continuation: &[u32]) -> Vec<(usize, Vec<f32>)> {
    let other: Vec<u32> = prompt[..prompt.len() / 2].iter().rev().copied().collect();
    let row = |slot, position, token, logits| Row { slot, position, token, logits };
    let split = prompt.len() / 3;
    let mut steps: Vec<Vec<Row>> = vec![
        (0..split)
            .map(|p| row(0, p, prompt[p], false))
            .chain((0..other.len()).map(|p| row(1, p, other[p], p + 1 == other.len())))
            .collect(),
        (split..prompt.len()).map(|p| row(0, p, prompt[p], p + 1 == prompt.len())).collect(),
    ];
    for (i, &token) in continuation[..continuation.len() - 1].iter().enumerate() {
        steps.push(vec![row(1, other.len() + i, prompt[i], true), row(0, prompt.len() + i, token, true)]);
    }
    let mut caches = vec![model.new_cache(), model.new_cache()];
    let mut all = Vec::new();
    for rows in &steps {
        let logits = model.forward(rows, &mut caches).unwrap();
        all.extend(rows.iter().filter(|r| r.logits).map(|r| r.slot).zip(logits.iter().map(<[f32]>::to_vec)));
    }
    all
}

/// Half the L1 distance between the next-token distributions of two logits rows.
fn total_variation(a: &[f32], b: &[f32]) -> f32 {
    let softmax = |row: &[f32]| {
        let max = row.iter().fold(f32::MIN, |m, &x| m.max(x));
        let exp: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.into_iter().map(move |x| x / sum)
    };
    softmax(a).zip(softmax(b)).map(|(p, q)| (p - q).abs()).sum::<f32>() / 2.0
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// Runs the schedule of [`scheduled_logits`] on `ours` and on `reference` and checks they agree: the same
/// argmax but at near-ties, next-token distributions within `max_tv` total variation, and llama.cpp's
/// greedy token (or its runner-up) at every step of the teacher-forced sequence.
fn agrees_on_smollm2<A: Decoder, B: Decoder>(ours: &A, reference: &B, max_tv: f32) {
    let golden = golden("smollm2_greedy.json");
    let (prompt, expected, runner_up) =
        (ids(&golden["prompt_ids"]), ids(&golden["ids"]), ids(&golden["runner_up_ids"]));
    let reference_rows = scheduled_logits(reference, &prompt, &expected);
    let our_rows = scheduled_logits(ours, &prompt, &expected);
    assert_eq!(our_rows.len(), reference_rows.len());
    let (mut worst_tv, mut worst_logit) = (0.0f32, 0.0f32);
    for ((slot, a), (their_slot, b)) in our_rows.iter().zip(&reference_rows) {
        assert_eq!(slot, their_slot);
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        worst_logit = worst_logit.max(a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
        let tv = total_variation(a, b);
        worst_tv = worst_tv.max(tv);
        assert!(tv < max_tv, "next-token distributions {tv} apart");
        let (ours, theirs) = (argmax(a), argmax(b));
        assert!(ours == theirs || (b[ours] - b[theirs]).abs() < 0.05 * scale, "argmax {ours} vs {theirs}");
    }
    println!(
        "{} logits rows: largest total variation {worst_tv:.3}, largest logit difference {worst_logit:.3} of the \
         row's largest logit",
        our_rows.len()
    );
    let first: Vec<&Vec<f32>> = our_rows.iter().filter(|(slot, _)| *slot == 0).map(|(_, l)| l).collect();
    assert_eq!(first.len(), expected.len());
    for (step, row) in first.iter().enumerate() {
        let best = argmax(row) as u32;
        assert!(
            best == expected[step] || best == runner_up[step],
            "step {step}: {best} vs llama.cpp {}",
            expected[step]
        );
    }
}

fn load_smollm2<M>(load: impl FnOnce(&gguf_file::Content, &mut std::fs::File) -> M) -> M {
    let path = catalog_model("smollm2-135m-instruct");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    load(&content, &mut file)
}

/// The candle-ops model, the CUDA path's code, here on the CPU against our CPU kernels. Both quantize
/// activations to 8 bits (in different blocks); measured here: up to 0.09 total variation apart.
#[test]
fn the_candle_backend_agrees_with_the_cpu_kernels_and_llama_cpp() {
    let kernels = load_smollm2(|ct, file| Transformer::load(ct, file, 512, 2).unwrap());
    let candle = load_smollm2(|ct, file| CandleTransformer::load(ct, file, 512, &candle_core::Device::Cpu).unwrap());
    agrees_on_smollm2(&candle, &kernels, 0.15);
}

/// The same code on the GPU against itself on the CPU (`cargo test --features cuda --test local_models cuda`).
/// candle's CUDA matmuls run larger batches on dequantized weights, without quantizing activations: on this
/// schedule exact f32 math is up to 0.19 total variation from 8-bit activations (measured on the CPU with
/// `CANDLE_DEQUANTIZE_ALL=1`), and the GPU run was 0.18 from the CPU one.
#[cfg(feature = "cuda")]
#[test]
fn the_cuda_backend_agrees_with_the_candle_cpu_backend_and_llama_cpp() {
    let device = candle_core::Device::new_cuda(0).expect("a CUDA device");
    let cuda = load_smollm2(|ct, file| CandleTransformer::load(ct, file, 512, &device).unwrap());
    let cpu = load_smollm2(|ct, file| CandleTransformer::load(ct, file, 512, &candle_core::Device::Cpu).unwrap());
    agrees_on_smollm2(&cuda, &cpu, 0.25);
}

/// The generation engine on the candle backend (here its CPU device): greedy generation starts as llama.cpp's,
/// does not depend on the batch, and `n` seeded samples (forked caches) are reproducible and differ.
#[test]
fn the_engine_generates_on_the_candle_backend_alone_in_a_batch_and_with_forks() {
    let options = LlmOptions { max_batch: 8, backend: Backend::Candle(candle_core::Device::Cpu), ..Default::default() };
    let llm = LocalLlm::load(&catalog_model("smollm2-135m-instruct"), &options).unwrap();
    let reference = golden("smollm2_greedy.json");
    let prompt_ids = llm.prompt_ids(&Prompt::Chat(messages(&reference["messages"]))).unwrap();
    let greedy = Sampling { max_tokens: Some(16), ..Default::default() };
    let alone = llm.generate_blocking(prompt_ids.clone(), &greedy, 1).unwrap();
    println!("candle backend, greedy: {:?}", alone.texts[0]);
    assert_eq!(alone.tokens[0][..5], ids(&reference["ids"])[..5]);
    let sampling = Sampling { temperature: Some(1.0), max_tokens: Some(10), seed: Some(7), ..Default::default() };
    let other = llm.prompt_ids(&Prompt::Chat(vec![ChatMessage::new("user", "Name an animal.")])).unwrap();
    let (batched, forked) = std::thread::scope(|scope| {
        let samples = scope.spawn(|| llm.generate_blocking(other.clone(), &sampling, 3).unwrap());
        (llm.generate_blocking(prompt_ids.clone(), &greedy, 1).unwrap(), samples.join().unwrap())
    });
    // candle's CPU ops compute each row on its own, so the batch changes no bit.
    assert_eq!(batched.tokens, alone.tokens);
    let again = llm.generate_blocking(other, &sampling, 3).unwrap();
    assert_eq!(again.tokens, forked.tokens, "same seed, same samples");
    assert!(forked.tokens.iter().collect::<BTreeSet<_>>().len() >= 2, "{:?}", forked.texts);
}

/// Gemma 3 on the candle backend (its CPU device): scaled embeddings, q/k norms, sandwich norms, GELU and
/// K-quant weights through candle's ops give llama.cpp's greedy completion, alone and decoding beside another.
#[test]
fn gemma3_on_the_candle_backend_matches_llama_cpp_alone_and_in_a_batch() {
    let options = LlmOptions { max_batch: 4, backend: Backend::Candle(candle_core::Device::Cpu), ..Default::default() };
    let llm = LocalLlm::load(&catalog_model("gemma3-270m"), &options).unwrap();
    let prompt = llm.prompt_ids(&Prompt::Completion("The capital of France is".into())).unwrap();
    let sampling = Sampling { max_tokens: Some(8), ..Default::default() };
    let alone = llm.generate_blocking(prompt.clone(), &sampling, 1).unwrap();
    assert_eq!(alone.tokens[0], [506, 5279, 529, 506, 2891, 529, 7001, 236761], "{:?}", alone.texts[0]);
    let other = llm.prompt_ids(&Prompt::Completion("My favourite colour is".into())).unwrap();
    let (batched, other) = std::thread::scope(|scope| {
        let other = scope.spawn(|| llm.generate_blocking(other, &sampling, 1).unwrap());
        (llm.generate_blocking(prompt, &sampling, 1).unwrap(), other.join().unwrap())
    });
    assert_eq!(batched.tokens, alone.tokens);
    assert!(!other.texts[0].is_empty());
}

/// Gemma 3's sliding-window layers past the window, on the candle backend against the CPU kernels: a
/// 600-token prompt prefilled in two chunks beside a short sequence, then both decoded together, so the
/// window masks of prompt chunks and of batched decoding rows both cut positions (the window is 512).
#[test]
fn gemma3_sliding_window_on_the_candle_backend_matches_the_cpu_kernels() {
    let path = catalog_model("gemma3-270m");
    let open = || {
        let mut file = std::fs::File::open(&path).unwrap();
        (gguf_file::Content::read(&mut file).unwrap(), file)
    };
    let (content, mut file) = open();
    assert_eq!(content.metadata["gemma3.attention.sliding_window"].to_u32().unwrap(), 512);
    let kernels = Transformer::load(&content, &mut file, 1024, 2).unwrap();
    let (content, mut file) = open();
    let candle = CandleTransformer::load(&content, &mut file, 1024, &candle_core::Device::Cpu).unwrap();
    let tokenizer = TextTokenizer::load(&content, None).unwrap();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/prompts/sea.txt")).unwrap();
    let mut prompt = vec![2u32];
    while prompt.len() < 600 {
        prompt.extend(tokenizer.encode(&text, false).unwrap());
    }
    prompt.truncate(600);
    let continuation: Vec<u32> = prompt[100..105].to_vec();
    let ours = scheduled_logits(&candle, &prompt, &continuation);
    let reference = scheduled_logits(&kernels, &prompt, &continuation);
    let mut worst = 0.0f32;
    for ((slot, a), (_, b)) in ours.iter().zip(&reference) {
        let tv = total_variation(a, b);
        worst = worst.max(tv);
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let (mine, theirs) = (argmax(a), argmax(b));
        assert!(mine == theirs || (b[mine] - b[theirs]).abs() < 0.05 * scale, "sequence {slot}: {mine} vs {theirs}");
        assert!(tv < 0.15, "sequence {slot}: next-token distributions {tv} apart");
    }
    println!("gemma3 past the window: {} logits rows, largest total variation {worst:.3}", ours.len());
}

//! End to end on the test model server: generate, then vote, score, rewrite and translate, then Parquet.
//!
//! The server runs in answer-key mode: the teacher always answers right (votes agree), the student's skill
//! depends on the question (`mixed`: never, half the time, always), so `score` sorts questions into all
//! three bands and `rewrite` has work to do. Translations of the source passages are scripted replies.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, Float64Array, RecordBatch, UInt32Array};
use common::{TestServer, manifest, read_parquet_dir, run_in, stderr, strings, write};

/// English passages and the French the scripted translator returns for each. The last two are traps: an
/// "English translation" (fails the language gate) and a translation that drops the number's placeholder.
const PASSAGES: [(&str, &str); 10] = [
    (
        "The river carries fine sediment from the mountains down to the wide delta near the sea.",
        "La rivière transporte des sédiments fins depuis les montagnes jusqu'au large delta près de la mer.",
    ),
    (
        "Farmers in the valley rotate their crops so that the soil keeps its strength over the years.",
        "Les agriculteurs de la vallée font tourner leurs cultures afin que le sol garde sa force au fil des années.",
    ),
    (
        "A small bakery sells bread in the morning and closes its doors early in the afternoon.",
        "Une petite boulangerie vend du pain le matin et ferme ses portes tôt dans l'après-midi.",
    ),
    (
        "The old library keeps its rare books in a cool room where the light is always dim.",
        "La vieille bibliothèque conserve ses livres rares dans une pièce fraîche où la lumière est toujours faible.",
    ),
    (
        "Children learn to swim in the lake during the warm summer weeks under careful supervision.",
        "Les enfants apprennent à nager dans le lac pendant les chaudes semaines d'été sous une surveillance attentive.",
    ),
    (
        "The train leaves the station every hour and crosses the bridge above the quiet river.",
        "Le train quitte la gare toutes les heures et traverse le pont au-dessus de la rivière tranquille.",
    ),
    (
        "Engineers inspect the tunnel walls each spring to find cracks before they grow larger.",
        "Les ingénieurs inspectent les parois du tunnel chaque printemps pour trouver les fissures avant qu'elles ne grandissent.",
    ),
    (
        "The market square fills with fruit sellers, musicians and tourists on Saturday mornings.",
        "La place du marché se remplit de vendeurs de fruits, de musiciens et de touristes le samedi matin.",
    ),
    (
        "Bees visit the flowers of the orchard and carry pollen from one tree to the next.",
        "Bees visit the flowers of the orchard and carry pollen from one tree to the next one.",
    ),
    (
        "The museum opened 12 new rooms for the painting collection that arrived last winter.",
        "Le musée a ouvert de nouvelles salles pour la collection de peintures arrivée l'hiver dernier.",
    ),
];

fn graph(server: &TestServer) -> String {
    format!(
        r#"run: {{batch_rows: 4, partitions: 2}}
models:
  teacher: {{base_url: "{url}", model: teacher-model, max_concurrency: 16}}
  student: {{base_url: "{url}", model: student-model, max_concurrency: 16}}
  translator: {{base_url: "{url}", model: translator-model, max_concurrency: 16}}
nodes:
  - {{id: docs, kind: ingest, paths: [corpus]}}
  - id: qa
    kind: generate
    input: docs
    model: teacher
    prompt: "Write one word problem about this passage, as JSON with question and answer: {{{{ text }}}}"
    output: {{json: {{columns: [question, answer]}}}}
  - id: verified
    kind: vote
    input: qa
    model: teacher
    n: 6
    seed: 3
    answer: {{marker: '####'}}
  - id: scored
    kind: score
    input: verified
    model: student
    k: 8
    seed: 3
    answer: {{marker: '####'}}
    keep_answers: true
  - id: balanced
    kind: rewrite
    input: scored
    model: teacher
    rounds: 3
    seed: 3
    vote: {{model: teacher, n: 6, answer: {{marker: '####'}}}}
    score: {{model: student, k: 8, answer: {{marker: '####'}}}}
  - id: multilingual
    kind: translate
    input: balanced
    model: translator
    columns: [text]
    languages: [fr]
  - {{id: out, kind: sink, input: multilingual}}
"#,
        url = server.url
    )
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).as_any().downcast_ref::<T>().unwrap()
}

#[test]
fn generate_vote_score_rewrite_translate_accounts_for_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (i, (english, _)) in PASSAGES.iter().enumerate() {
        write(&root.join("corpus"), &format!("p{i:02}.txt"), english);
    }
    // Translation requests are recognised by the source text; numbers are masked as ⟦n⟧ before sending.
    let rules: Vec<serde_json::Value> = PASSAGES
        .iter()
        .map(|(english, french)| {
            let masked_start: String = english.replace("12", "⟦0⟧").chars().take(40).collect();
            let reply = french.to_string();
            serde_json::json!({"contains": masked_start, "reply": reply, "model": "translator-model"})
        })
        .collect();
    write(root, "script.json", &serde_json::Value::Array(rules).to_string());
    let server = TestServer::start(&[
        "--skill",
        "teacher-model=1.0",
        "--skill",
        "student-model=mixed",
        "--script",
        root.join("script.json").to_str().unwrap(),
    ]);
    write(root, "graph.yaml", &graph(&server));

    let validate = run_in(root, &["validate", "graph.yaml"]);
    assert!(validate.status.success(), "{}", stderr(&validate));
    let output = run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let data = read_parquet_dir(&root.join("out/data"));
    let rejects = read_parquet_dir(&root.join("out/rejects"));
    let m = manifest(&root.join("out"));
    assert_eq!(m["status"], "completed", "{m:#}");

    // Every input record is accounted for: in the data, or in rejects with a reason.
    let mut seen: BTreeSet<String> = strings(&data, "source_path").into_iter().flatten().collect();
    let reject_nodes = strings(&rejects, "node");
    let reject_reasons = strings(&rejects, "reason");
    let reject_paths = strings(&rejects, "source_path");
    let mut reasons_by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((node, reason), path) in reject_nodes.iter().zip(&reject_reasons).zip(&reject_paths) {
        reasons_by_node.entry(node.clone().unwrap()).or_default().push(reason.clone().unwrap());
        seen.insert(path.clone().unwrap());
    }
    let expected: BTreeSet<String> = (0..PASSAGES.len()).map(|i| format!("corpus/p{i:02}.txt")).collect();
    assert_eq!(seen, expected, "rejects: {reasons_by_node:#?}");

    // Votes: the teacher always agrees with itself.
    let total: usize = data.iter().map(RecordBatch::num_rows).sum();
    assert!(total > 0, "rejects: {reasons_by_node:#?}");
    for batch in &data {
        let agreement = column::<Float64Array>(batch, "agreement");
        let pass_rate = column::<Float64Array>(batch, "pass_rate");
        let categories = strings(std::slice::from_ref(batch), "category");
        let rounds = column::<UInt32Array>(batch, "rewrite_round");
        let directions = strings(std::slice::from_ref(batch), "rewrite_direction");
        for row in 0..batch.num_rows() {
            assert_eq!(agreement.value(row), 1.0);
            // Only learnable questions leave rewrite; the category agrees with the pass rate.
            assert_eq!(categories[row].as_deref(), Some("learnable"));
            assert!(pass_rate.value(row) > 0.0 && pass_rate.value(row) < 1.0, "{}", pass_rate.value(row));
            let direction = directions[row].as_deref().unwrap();
            assert_eq!(
                rounds.value(row) == 0,
                direction == "none",
                "round {} direction {direction}",
                rounds.value(row)
            );
        }
    }
    // The three bands all occurred at scoring time, and rewrite moved some questions into the band.
    let scored = &m["nodes"]["scored"];
    assert_eq!(scored["rows_out"], PASSAGES.len(), "{m:#}");
    let rewritten: Vec<u32> =
        data.iter().flat_map(|b| column::<UInt32Array>(b, "rewrite_round").values().to_vec()).collect();
    assert!(rewritten.iter().any(|&r| r > 0), "no row was rewritten: {reasons_by_node:#?}");
    for reason in reasons_by_node.get("balanced").into_iter().flatten() {
        assert!(reason.starts_with("still ") && reason.contains("after 3 rewrite rounds"), "{reason}");
    }

    // Translations: French rows carry the scripted text; the traps are rejected with their reasons.
    let languages = strings(&data, "language");
    let texts = strings(&data, "text");
    let paths = strings(&data, "source_path");
    for ((language, text), path) in languages.iter().zip(&texts).zip(&paths) {
        let index: usize = path.as_deref().unwrap()[8..10].parse().unwrap();
        match language.as_deref() {
            Some("fr") => {
                assert!(index < 8, "trap passage {index} was translated");
                assert_eq!(text.as_deref(), Some(PASSAGES[index].1));
            }
            Some("en") => assert_eq!(text.as_deref(), Some(PASSAGES[index].0)),
            other => panic!("language {other:?}"),
        }
    }
    let translate_reasons = reasons_by_node.get("multilingual").cloned().unwrap_or_default();
    // Each trap that reached translate was rejected there for the right reason.
    for reason in &translate_reasons {
        assert!(
            reason.starts_with("fr: language check failed: detected en")
                || reason.starts_with("fr: placeholder ⟦0⟧ missing"),
            "{reason}"
        );
    }
    let translated = languages.iter().filter(|l| l.as_deref() == Some("fr")).count();
    let originals = languages.iter().filter(|l| l.as_deref() == Some("en")).count();
    assert!(translated > 0);
    assert_eq!(originals, translated + translate_reasons.len(), "every row keeps its original");

    for node in ["qa", "verified", "scored", "balanced", "multilingual"] {
        let n = &m["nodes"][node];
        println!(
            "{node}: in {} out {} rejected {} calls {}",
            n["rows_in"], n["rows_out"], n["rejected"], n["model_calls"]
        );
    }
    println!(
        "data rows from rewritten questions: {}, rejects: {reasons_by_node:#?}",
        rewritten.iter().filter(|&&r| r > 0).count()
    );
    // Manifest counts add up node by node.
    for node in ["verified", "scored", "balanced"] {
        let n = &m["nodes"][node];
        assert_eq!(
            n["rows_in"].as_u64().unwrap(),
            n["rows_out"].as_u64().unwrap() + n["rejected"].as_u64().unwrap(),
            "{node}: {n}"
        );
    }
}

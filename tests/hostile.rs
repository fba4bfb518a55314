//! Hostile inputs never abort a run: each bad file becomes a reject with a reason, each bad config a clear
//! error before anything runs, and memory stays bounded throughout.
//!
//! The corpus is built by the test: a corrupt and an encrypted PDF, zip bombs named `.docx`, a binary
//! file named `.txt`, invalid UTF-8, a single 1 GiB line (as `.txt` and as `.jsonl`), empty files, symbolic
//! link loops, a JSONL with bad lines, a Parquet with an unexpected schema, a 100,000-file folder, and
//! hostile YAML (an anchors bomb, deep nesting, wrong types, huge and negative numbers).
//!
//! Peak RSS comes from `wait4`'s rusage of the `sdg` child (`ru_maxrss`, KiB on Linux); run with
//! `--nocapture` to see the figures.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use common::{manifest, read_parquet_dir, strings, write};
use sdg::testkit;

/// One GiB: the single line. Reading it whole would blow the RSS bound below by itself.
const HUGE_LINE_BYTES: u64 = 1 << 30;

/// Peak RSS allowed for a run over the hostile corpus, which holds a 1 GiB line and zip bombs that unpack to
/// 1 GiB and 200 MiB. What may be in memory: the batches in flight (`batch_bytes x window x workers` =
/// 4 MiB x 4 x 2 = 32 MiB), the runtime and Parquet writers, and per worker one whole document of at most
/// `max_file_mb` = 64 MiB with the buffers it passes through (the bomb under the unpacked budget is read up
/// to that limit, then refused). Half of the 1 GiB line: a reader that held the line, or an unpacked bomb,
/// would go over.
const MAX_RSS_MIB: f64 = 512.0;

/// Peak RSS allowed for `sdg validate` / `sdg run` on a hostile config: they must fail before reading much.
const MAX_CONFIG_RSS_MIB: f64 = 128.0;

/// What a measured `sdg` run did.
struct Measured {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    peak_rss_mib: f64,
    seconds: f64,
}

impl Measured {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn describe(&self) -> String {
        format!(
            "exit code {:?}, signal {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// Runs `sdg args` in `dir`, reaping it with `wait4` to read its peak RSS. Output goes through files (in
/// `dir`), so a chatty child cannot block on a full pipe.
// The child is reaped by wait4 (which also gives its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn run_measured(dir: &Path, label: &str, args: &[&str]) -> Measured {
    let stdout_path = dir.join(format!("{label}.stdout"));
    let stderr_path = dir.join(format!("{label}.stderr"));
    let started = Instant::now();
    let child = common::sdg()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("sdg starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let seconds = started.elapsed().as_secs_f64();
    let measured = Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        // ru_maxrss is in KiB on Linux.
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        seconds,
    };
    println!(
        "{label}: `sdg {}` exit {:?}, peak RSS {:.1} MiB, {:.1} s",
        args.join(" "),
        measured.code,
        measured.peak_rss_mib,
        measured.seconds
    );
    measured
}

/// Writes `{"text": "aaa…"}` of exactly `bytes` bytes with no newline, 1 MiB at a time.
fn write_single_line(path: &Path, bytes: u64) {
    let head = b"{\"text\": \"";
    let tail = b"\"}";
    let mut file = std::io::BufWriter::new(File::create(path).unwrap());
    file.write_all(head).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut left = bytes - (head.len() + tail.len()) as u64;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.write_all(tail).unwrap();
    file.flush().unwrap();
}

/// Every kind of hostile file, plus good files that must still land in `data/`.
fn hostile_corpus(root: &Path) {
    let c = root.join("corpus");
    for folder in ["docs", "rows", "huge", "links/inner"] {
        std::fs::create_dir_all(c.join(folder)).unwrap();
    }
    // Good files.
    write(&c, "good/tides.txt", "Tides rise and fall twice a day because the moon pulls on the oceans.");
    write(&c, "good/glaciers.md", "# Glaciers\n\nGlaciers carve U-shaped valleys as they move downhill.");
    write(&c, "good/deserts.txt", "Deserts receive less than 250 millimetres of rain in a year.");

    // Documents that cannot be read.
    testkit::write_corrupt_pdf(&c.join("docs/corrupt.pdf")).unwrap();
    testkit::write_encrypted_pdf(&c.join("docs/encrypted.pdf"), &["A secret page."], "hunter2").unwrap();
    // Zip bombs named .docx: one that says it unpacks to 1 GiB, one that stays under the 256 MiB unpacked
    // budget but whose single text run is bigger than a whole document may be.
    testkit::write_zip_bomb_docx(&c.join("docs/bomb.docx"), HUGE_LINE_BYTES).unwrap();
    testkit::write_zip_bomb_docx(&c.join("docs/bomb-under-budget.docx"), 200 << 20).unwrap();
    testkit::write_binary_txt(&c.join("docs/binary.txt")).unwrap();
    std::fs::write(c.join("docs/latin1.txt"), b"Caf\xE9 au lait, cr\xE8me br\xFBl\xE9e.\n").unwrap();
    std::fs::write(c.join("docs/empty.txt"), b"").unwrap();
    std::fs::write(c.join("rows/empty.jsonl"), b"").unwrap();

    // One line of 1 GiB, with no newline: as a text file and (the same bytes, hard-linked) as JSONL.
    write_single_line(&c.join("huge/line.jsonl"), HUGE_LINE_BYTES);
    std::fs::hard_link(c.join("huge/line.jsonl"), c.join("huge/line.txt")).unwrap();

    // Row files with bad rows or the wrong shape.
    write(
        &c,
        "rows/mixed.jsonl",
        "{\"text\": \"Coral reefs shelter a quarter of all marine species.\"}\n\
         this line is not JSON\n\
         [\"an\", \"array\"]\n\
         {\"title\": \"no text field\"}\n\
         {\"text\": 42}\n\
         {\"text\": \"Kelp forests grow up to half a metre a day.\"}\n",
    );
    testkit::write_parquet(&c.join("rows/schema.parquet"), &[("content", vec![Some("Text in the wrong column.")])])
        .unwrap();

    // Symbolic link loops: a folder that contains itself, a link to itself, two links to each other.
    std::os::unix::fs::symlink("..", c.join("links/inner/up")).unwrap();
    std::os::unix::fs::symlink("self.txt", c.join("links/self.txt")).unwrap();
    std::os::unix::fs::symlink("pong.md", c.join("links/ping.md")).unwrap();
    std::os::unix::fs::symlink("ping.md", c.join("links/pong.md")).unwrap();
}

/// (source_path, reason) of every reject under `out/rejects`.
fn rejects(out: &Path) -> Vec<(String, String)> {
    let batches = read_parquet_dir(&out.join("rejects"));
    strings(&batches, "source_path")
        .into_iter()
        .zip(strings(&batches, "reason"))
        .map(|(path, reason)| (path.unwrap_or_default(), reason.unwrap_or_default()))
        .collect()
}

#[test]
fn a_hostile_corpus_completes_with_every_bad_file_in_rejects_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    hostile_corpus(dir.path());
    write(
        dir.path(),
        "graph.yaml",
        "nodes:\n  - {id: docs, kind: ingest, paths: [corpus], follow_links: true}\n  - {id: out, kind: sink, input: docs}\n",
    );
    let run =
        run_measured(dir.path(), "hostile-corpus", &["run", "graph.yaml", "-o", "out", "--workers", "2", "--quiet"]);
    assert!(run.success(), "{}", run.describe());
    let out = dir.path().join("out");
    let m = manifest(&out);
    assert_eq!(m["status"], "completed", "{m:#}");

    // Good data still lands.
    let data = read_parquet_dir(&out.join("data"));
    let mut texts: Vec<String> = strings(&data, "text").into_iter().flatten().collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "# Glaciers\n\nGlaciers carve U-shaped valleys as they move downhill.",
            "Coral reefs shelter a quarter of all marine species.",
            "Deserts receive less than 250 millimetres of rain in a year.",
            "Kelp forests grow up to half a metre a day.",
            "Tides rise and fall twice a day because the moon pulls on the oceans.",
        ]
    );

    // Every bad file is rejected, for the right reason.
    let rejected = rejects(&out);
    let reasons_for = |path: &str| -> Vec<&str> {
        rejected.iter().filter(|(p, _)| p == path).map(|(_, reason)| reason.as_str()).collect()
    };
    let expect = |path: &str, needles: &[&str]| {
        let reasons = reasons_for(path);
        assert_eq!(reasons.len(), 1, "{path} should have one reject: {rejected:#?}");
        for needle in needles {
            assert!(reasons[0].contains(needle), "{path}: {:?} should say {needle:?}", reasons[0]);
        }
    };
    expect("corpus/docs/corrupt.pdf", &["corrupt pdf file"]);
    expect("corpus/docs/encrypted.pdf", &["encrypted pdf file"]);
    expect("corpus/docs/bomb.docx", &["word/document.xml", "unpacks to more than 256 MiB", "zip bomb"]);
    expect("corpus/docs/bomb-under-budget.docx", &["text of the docx file is larger than", "max_file_mb", "64 MiB"]);
    expect("corpus/docs/binary.txt", &["binary content"]);
    expect("corpus/docs/latin1.txt", &["not valid UTF-8", "offset 3"]);
    expect("corpus/docs/empty.txt", &["empty txt file"]);
    expect("corpus/rows/empty.jsonl", &["empty jsonl file"]);
    expect("corpus/huge/line.txt", &["too large", "1024 MiB", "64 MiB", "max_file_mb"]);
    expect("corpus/huge/line.jsonl", &["line 1", "longer than", "16 MiB", "max_record_mb"]);
    expect("corpus/rows/schema.parquet", &["schema", "no \"text\" column", "content"]);
    for link in ["corpus/links/inner/up", "corpus/links/self.txt", "corpus/links/ping.md", "corpus/links/pong.md"] {
        expect(link, &["symbolic link loop"]);
    }
    let mut mixed = reasons_for("corpus/rows/mixed.jsonl");
    mixed.sort();
    assert_eq!(mixed.len(), 4, "{mixed:#?}");
    for (reason, needle) in mixed.iter().zip(["line 2", "line 3", "line 4", "line 5"]) {
        assert!(reason.starts_with(needle), "{reason:?} should start with {needle:?}");
    }
    assert!(mixed[0].contains("invalid JSON"), "{mixed:?}");
    assert!(mixed[1].contains("expected a JSON object"), "{mixed:?}");
    assert!(mixed[2].contains("no \"text\" field"), "{mixed:?}");
    assert!(mixed[3].contains("not a string"), "{mixed:?}");
    assert!(!rejected.iter().any(|(path, _)| path.starts_with("corpus/good/")), "{rejected:#?}");
    assert_eq!(rejected.len(), 19, "{rejected:#?}");
    assert_eq!(m["nodes"]["docs"]["rows_out"], 5);
    assert_eq!(m["nodes"]["docs"]["rejected"], 19);
    assert_eq!(m["rejects"]["rows"], 19);

    assert!(
        run.peak_rss_mib < MAX_RSS_MIB,
        "peak RSS {:.1} MiB is over {MAX_RSS_MIB} MiB with a 1 GiB line in the corpus",
        run.peak_rss_mib
    );
}

#[test]
fn a_hundred_thousand_files_are_discovered_and_read_in_bounded_memory() {
    const FILES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let many = dir.path().join("many");
    std::fs::create_dir_all(&many).unwrap();
    let started = Instant::now();
    for n in 0..FILES {
        std::fs::write(many.join(format!("note-{n:06}.txt")), format!("Note {n}.")).unwrap();
    }
    println!("wrote {FILES} files in {:.1} s", started.elapsed().as_secs_f64());
    // A wide window: each file is one small batch, so more of them may be in flight at once.
    write(
        dir.path(),
        "graph.yaml",
        "run: {window: 64}\nnodes:\n  - {id: docs, kind: ingest, paths: [many]}\n  - {id: out, kind: sink, input: docs}\n",
    );
    let run = run_measured(dir.path(), "100k-files", &["run", "graph.yaml", "-o", "out", "--workers", "2", "--quiet"]);
    assert!(run.success(), "{}", run.describe());
    let out = dir.path().join("out");
    let m = manifest(&out);
    assert_eq!(m["status"], "completed");
    assert_eq!(m["nodes"]["docs"]["files_done"], FILES);
    assert_eq!(m["nodes"]["docs"]["rows_out"], FILES);
    assert_eq!(m["outputs"]["out"]["rows"], FILES);
    let data = read_parquet_dir(&out.join("data"));
    let texts: std::collections::HashSet<String> = strings(&data, "text").into_iter().flatten().collect();
    assert_eq!(texts.len(), FILES);
    assert!(texts.contains("Note 0.") && texts.contains("Note 99999."));
    assert!(rejects(&out).is_empty());
    assert!(run.peak_rss_mib < MAX_RSS_MIB, "peak RSS {:.1} MiB over {MAX_RSS_MIB} MiB", run.peak_rss_mib);
}

/// A small good corpus and graph, into which each hostile config puts its one bad part.
const GOOD_NODES: &str =
    "nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: out, kind: sink, input: docs}\n";

/// Runs `validate` and `run` on `text` and checks that both refuse it with a message naming `needles`
/// (file, line, key, what is wrong), that `run` wrote nothing, and that neither used much memory.
fn refuses(dir: &Path, name: &str, text: &str, needles: &[&str]) {
    write(dir, name, text);
    let out = format!("out-{name}");
    for (label, args) in [("validate", vec!["validate", name]), ("run", vec!["run", name, "-o", &out, "--quiet"])] {
        let result = run_measured(dir, &format!("{name}-{label}"), &args);
        assert_eq!(result.code, Some(1), "{label} {name}: {}", result.describe());
        assert!(result.stderr.contains(&format!("{name}:")), "{label} {name} names the file: {}", result.stderr);
        for needle in needles {
            assert!(result.stderr.contains(needle), "{label} {name} should say {needle:?}: {}", result.stderr);
        }
        assert!(
            result.peak_rss_mib < MAX_CONFIG_RSS_MIB,
            "{label} {name}: peak RSS {:.1} MiB over {MAX_CONFIG_RSS_MIB} MiB",
            result.peak_rss_mib
        );
    }
    assert!(!dir.join(&out).exists(), "a refused config writes nothing");
}

#[test]
fn hostile_yaml_is_a_clear_config_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "corpus/good.txt", "Rivers carry sediment to their deltas.");
    // The graph itself is fine.
    write(dir.path(), "ok.yaml", GOOD_NODES);
    let ok = run_measured(dir.path(), "good-validate", &["validate", "ok.yaml"]);
    assert!(ok.success(), "{}", ok.describe());

    // Billion laughs: nine levels of ten aliases each would expand to 10^9 nodes.
    let mut bomb = String::from("run:\n  seed: 1\nlol:\n  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        bomb.push_str(&format!("  - &a{level} [{refs}]\n"));
    }
    bomb.push_str(GOOD_NODES);
    refuses(dir.path(), "bomb.yaml", &bomb, &["invalid YAML", "more than 100000 nodes", "lol["]);

    // Nesting deep enough to overflow a recursive reader's stack: block lists, then flow brackets.
    let depth = 200_000;
    let deep = format!("run:\n  seed:\n    {}1\n{GOOD_NODES}", "- ".repeat(depth));
    refuses(dir.path(), "deep.yaml", &deep, &["deep.yaml:3:", "invalid YAML", "nested deeper than", "`run.seed[0][0]"]);
    let brackets = format!("run:\n  seed: {}1{}\n{GOOD_NODES}", "[".repeat(depth), "]".repeat(depth));
    refuses(dir.path(), "brackets.yaml", &brackets, &["brackets.yaml:2:", "invalid YAML", "nested deeper than"]);

    // Wrong types, each reported with its line and key path.
    refuses(
        dir.path(),
        "types.yaml",
        "run:\n  batch_rows: lots\n  window: [4]\n  partitions: {n: 2}\nnodes:\n  - {id: docs, kind: ingest, paths: 3}\n  - {id: out, kind: sink, input: [docs, {x: 1}]}\n",
        &[
            "types.yaml:2:15: `run.batch_rows` expected an integer, found `lots`",
            "types.yaml:3:11: `run.window`",
            "types.yaml:4:15: `run.partitions`",
            "`nodes[0].paths` expected a list",
        ],
    );
    refuses(dir.path(), "not-a-map.yaml", "- just\n- a\n- list\n", &["not-a-map.yaml:1:1:", "found a list"]);
    refuses(dir.path(), "nodes-map.yaml", "nodes: {id: docs}\n", &["`nodes` expected a list of nodes, found a map"]);

    // Huge and negative numbers.
    refuses(
        dir.path(),
        "numbers.yaml",
        "run:\n  batch_rows: 99999999999999999999999\n  window: -4\n  partitions: 4294967296\n  seed: 1e400\n\
         nodes:\n  - {id: docs, kind: ingest, paths: [corpus], max_file_mb: 18446744073709551615, max_record_mb: 0}\n  - {id: out, kind: sink, input: docs}\n",
        &[
            "numbers.yaml:2:15: `run.batch_rows` number 99999999999999999999999 is out of range for u64",
            "numbers.yaml:3:11: `run.window` number -4 is out of range for u64",
            "numbers.yaml:4:15: `run.partitions` number 4294967296 is out of range for u32",
            "numbers.yaml:5:9: `run.seed` expected an integer, found `1e400`",
            "`nodes[0].max_file_mb` must be between 1 and 1048576 (MiB), found 18446744073709551615",
            "`nodes[0].max_record_mb` must be between 1 and 1048576 (MiB), found 0",
        ],
    );
}

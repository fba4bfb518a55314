//! Throughput of the spine's hot paths, one core each: ingest+chunk (MB/s), Parquet write (MB/s) and
//! dedup (rows/s). Run: `cargo bench --bench spine`. Criterion prints the figures ("thrpt").

use std::path::Path;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

use sdg::io::ingest::{FileReader, IngestSpec, discover};
use sdg::io::sink::{BucketWriter, PartSettings, SinkFormat};
use sdg_operators::Operator;
use sdg_operators::chunk::{ChunkSpec, Chunker};
use sdg_operators::dedup::{Dedup, DedupSpec};

const WORDS: &[&str] = &[
    "the",
    "engine",
    "reads",
    "documents",
    "and",
    "splits",
    "them",
    "into",
    "passages",
    "that",
    "a",
    "teacher",
    "model",
    "turns",
    "into",
    "grounded",
    "questions",
    "with",
    "answers",
    "checked",
    "by",
    "voting",
    "across",
    "several",
    "samples",
    "while",
    "memory",
    "stays",
    "bounded",
    "by",
    "the",
    "window",
    "of",
    "batches",
];

/// Deterministic pseudo-English: paragraphs of sentences drawn from a small vocabulary.
fn prose(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(bytes + 64);
    let mut words_in_sentence = 0;
    let mut sentences_in_paragraph = 0;
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        words_in_sentence += 1;
        if words_in_sentence > 8 + (state % 12) as usize {
            out.push_str(". ");
            words_in_sentence = 0;
            sentences_in_paragraph += 1;
            if sentences_in_paragraph > 4 {
                out.push_str("\n\n");
                sentences_in_paragraph = 0;
            }
        } else {
            out.push(' ');
        }
    }
    out
}

fn write_corpus(dir: &Path, files: usize, bytes_per_file: usize) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut total = 0;
    for f in 0..files {
        let text = prose(f as u64, bytes_per_file);
        total += text.len();
        std::fs::write(dir.join(format!("doc-{f:04}.txt")), text).unwrap();
    }
    total
}

fn ingest_and_chunk(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    let total = write_corpus(&root, 32, 512 << 10);
    let spec = IngestSpec::for_paths(vec![root.clone()], dir.path());
    let chunk_spec: ChunkSpec = serde_json::from_value(json!({"max_tokens": 1000, "overlap": 100})).unwrap();
    let mut group = c.benchmark_group("spine");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("ingest+chunk (txt, 1000-char chunks, 100 overlap)", |b| {
        b.iter(|| {
            let mut chunker = Chunker::new(chunk_spec.clone()).unwrap();
            let mut chunks = 0;
            for file in discover(&spec, "docs").files {
                let mut reader = FileReader::open(&spec, "docs", file);
                while let Some(read) = reader.next_batch(1024, 4 << 20) {
                    chunks += chunker.process(read.rows).unwrap().rows.num_rows();
                }
            }
            assert!(chunks > 0);
            chunks
        })
    });
    group.finish();
}

fn chunk_rows(rows: usize, text_bytes: usize) -> RecordBatch {
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("text", DataType::Utf8, false)]));
    let ids: Vec<String> = (0..rows).map(|i| format!("{:032x}", (i as u128) * 0x9E37_79B9_7F4A_7C15)).collect();
    let texts: Vec<String> = (0..rows).map(|i| prose(i as u64 % 997, text_bytes)).collect();
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ids)), Arc::new(StringArray::from(texts))]).unwrap()
}

fn parquet_write(c: &mut Criterion) {
    let batch = chunk_rows(16_384, 1000);
    // Payload bytes: the id and text values, not Arrow's buffer capacity.
    let bytes: usize =
        batch.columns().iter().map(|c| c.as_any().downcast_ref::<StringArray>().map_or(0, |s| s.values().len())).sum();
    let mut group = c.benchmark_group("spine");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("parquet write (zstd 3, 16k rows x 1 KB)", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let settings = PartSettings {
                    format: SinkFormat::Parquet,
                    rows_per_part: 100_000,
                    row_group_rows: 16_384,
                    zstd_level: 3,
                };
                let mut writer = BucketWriter::new(dir.path(), "data", 0, batch.schema(), settings);
                for slice in 0..4 {
                    writer.write(&batch.slice(slice * 4096, 4096)).unwrap();
                }
                writer.finish().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn dedup(c: &mut Criterion) {
    // 10% of rows repeat an earlier text, so both the keep and the drop paths are exercised.
    let rows = 20_000;
    let batch = {
        let b = chunk_rows(rows, 400);
        let texts = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let texts: Vec<String> =
            (0..rows).map(|i| texts.value(if i % 10 == 9 { i / 2 } else { i }).to_string()).collect();
        RecordBatch::try_new(b.schema(), vec![Arc::clone(b.column(0)), Arc::new(StringArray::from(texts))]).unwrap()
    };
    let mut group = c.benchmark_group("spine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    for (name, spec) in
        [("dedup exact (rows/s)", json!({})), ("dedup exact+minhash 128 (rows/s)", json!({"near": {"threshold": 0.8}}))]
    {
        let spec: DedupSpec = serde_json::from_value(spec).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut op = Dedup::new(spec.clone()).unwrap();
                let mut kept = 0;
                for start in (0..rows).step_by(1024) {
                    kept += op.process(batch.slice(start, 1024.min(rows - start))).unwrap().rows.num_rows();
                }
                kept
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ingest_and_chunk, parquet_write, dedup);
criterion_main!(benches);

//! `sdg::io::hub_datasets` against a real Hub server (`sdg-test-hub`) over HTTP: search, Parquet listings
//! of both layouts, sampled rows read with range requests (checked against the rows written), seeds,
//! and errors, retries and tokens.

mod common;

use common::TestHub;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sdg::io::hub_datasets::{
    HubClient, HubError, ParquetFile, RetryPolicy, SampleOptions, SampledRows, sample_rows, sample_rows_with,
};

fn hub_client(hub: &TestHub, token: Option<&str>) -> HubClient {
    let retry =
        RetryPolicy { attempts: 4, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(50) };
    HubClient::with_endpoint(&hub.url, token.map(str::to_string)).with_retry(retry)
}

/// Writes `batches` to `path` as Parquet with `props`.
fn write_parquet(path: &Path, batches: impl IntoIterator<Item = RecordBatch>, props: Option<WriterProperties>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut batches = batches.into_iter().peekable();
    let schema = batches.peek().expect("a batch").schema();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for batch in batches {
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
}

fn write_text(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const WORDS: [&str; 32] = [
    "synthetic",
    "corpus",
    "river",
    "lattice",
    "quantum",
    "harbor",
    "vector",
    "meadow",
    "signal",
    "granite",
    "orbit",
    "lantern",
    "cipher",
    "willow",
    "ember",
    "canyon",
    "prism",
    "falcon",
    "tundra",
    "mosaic",
    "beacon",
    "saffron",
    "glacier",
    "nimbus",
    "thistle",
    "zephyr",
    "cobalt",
    "juniper",
    "marble",
    "kestrel",
    "delta",
    "aurora",
];

/// The long text of row `row` of `split`: 60 to 100 words, different for every row.
fn long_text(split: &str, row: u64) -> String {
    let mut state = row.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ split.len() as u64;
    let mut text = format!("{split} row {row}:");
    let words = 60 + row % 41;
    for _ in 0..words {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(' ');
        text.push_str(WORDS[(state % 32) as usize]);
    }
    text
}

fn label(row: u64) -> String {
    format!("label-{}", row % 7)
}

/// Rows `rows` of a split of the big corpus: `id` (row within the split), `label`, `text`.
fn corpus_batch(split: &str, rows: std::ops::Range<u64>) -> RecordBatch {
    let ids: Vec<i64> = rows.clone().map(|r| r as i64).collect();
    let labels: Vec<String> = rows.clone().map(label).collect();
    let texts: Vec<String> = rows.map(|r| long_text(split, r)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> =
        vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(labels)), Arc::new(StringArray::from(texts))];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Writes a split of the big corpus to `path`: rows `rows`, row groups of 10,000 rows, small text pages
/// (so a few rows are a few pages) with an offset index, as parquet-rs writes by default.
fn write_corpus_file(path: &Path, split: &str, rows: std::ops::Range<u64>) {
    let text = ColumnPath::from("text");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(10_000))
        .set_compression(Compression::SNAPPY)
        .set_write_batch_size(64)
        .set_column_dictionary_enabled(text.clone(), false)
        .set_column_data_page_row_count_limit(text, 32)
        .build();
    let chunks =
        (rows.start..rows.end).step_by(5_000).map(|start| corpus_batch(split, start..(start + 5_000).min(rows.end)));
    write_parquet(path, chunks, Some(props));
}

/// A question/answer batch: `question` (text), `answer` (int), as in the tiny converted dataset.
fn qa_batch(prefix: &str, rows: u64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Int32, false),
    ]));
    let questions: Vec<String> = (0..rows).map(|i| format!("{prefix} question {i}")).collect();
    let answers: Vec<i32> = (0..rows).map(|i| i as i32 * 3).collect();
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(questions)), Arc::new(Int32Array::from(answers))])
        .unwrap()
}

/// `acme/tiny-qa`: JSON Lines on `main`, Parquet only on the convert branch (both layouts).
fn write_tiny_qa(root: &Path) {
    let repo = root.join("datasets/acme/tiny-qa");
    write_text(&repo.join("README.md"), "# tiny qa\n");
    write_text(&repo.join("data.jsonl"), "{\"question\": \"q\", \"answer\": 1}\n");
    write_parquet(&repo.join(".convert-parquet/default/train/0000.parquet"), [qa_batch("train", 30)], None);
    write_parquet(&repo.join(".convert-parquet/default/validation/0000.parquet"), [qa_batch("validation", 10)], None);
    write_parquet(&repo.join(".convert-parquet/extra/tiny-qa-test.parquet"), [qa_batch("extra test", 5)], None);
}

/// `acme/numbers`: one own Parquet file of 100 rows (`n`, `square_root`), a schema unlike the others.
fn write_numbers(root: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int32, false),
        Field::new("square_root", DataType::Float64, false),
    ]));
    let n: Vec<i32> = (0..100).collect();
    let roots: Vec<f64> = (0..100).map(|i| (i as f64).sqrt()).collect();
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(n)), Arc::new(Float64Array::from(roots))]).unwrap();
    write_parquet(&root.join("datasets/acme/numbers/data/train-00000-of-00001.parquet"), [batch], None);
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let array = batch.column_by_name(column).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..array.len()).map(|i| array.value(i).to_string()).collect()
}

fn ints(batch: &RecordBatch, column: &str) -> Vec<i64> {
    let array = batch.column_by_name(column).unwrap();
    if let Some(array) = array.as_any().downcast_ref::<Int64Array>() {
        return array.values().to_vec();
    }
    array.as_any().downcast_ref::<Int32Array>().unwrap().values().iter().map(|&v| v as i64).collect()
}

/// (dataset, config, split, path, row) of every sampled row, in order.
fn provenance(sample: &SampledRows) -> Vec<(String, String, String, String, u64)> {
    sample
        .groups
        .iter()
        .flat_map(|g| {
            g.origins.iter().map(|o| (g.dataset.clone(), g.config.clone(), g.split.clone(), o.path.clone(), o.row))
        })
        .collect()
}

fn layout(files: &[ParquetFile]) -> Vec<String> {
    files.iter().map(|f| format!("{}/{} {}", f.config, f.split, f.path)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_and_lists_both_parquet_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_tiny_qa(root);
    write_numbers(root);
    let own = root.join("datasets/acme/own-layouts");
    for path in ["en/train/0000.parquet", "fr/test-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"] {
        write_parquet(&own.join(path), [qa_batch(path, 3)], None);
    }
    // Own files win over the convert branch.
    write_parquet(&own.join(".convert-parquet/default/train/0000.parquet"), [qa_batch("converted", 3)], None);
    write_text(&root.join("datasets/news/daily-corpus/README.md"), "# no parquet\n");
    let hub = TestHub::start(root, &[]);
    let client = hub_client(&hub, None);

    let found = client.search("qa", 10).await.unwrap();
    assert_eq!(found.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["acme/tiny-qa"]);
    assert_eq!(found[0].downloads, Some(0));
    assert!(found[0].sha.as_ref().is_some_and(|sha| sha.len() == 40));
    let acme = client.search("ACME", 2).await.unwrap();
    assert_eq!(acme.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["acme/numbers", "acme/own-layouts"]);
    assert!(client.search("no-such-words", 10).await.unwrap().is_empty());

    let files = client.parquet_files("acme/own-layouts").await.unwrap();
    assert_eq!(
        layout(&files),
        [
            "default/validation data/validation-00000-of-00001.parquet",
            "en/train en/train/0000.parquet",
            "fr/test fr/test-00000-of-00001.parquet",
        ]
    );
    assert!(files.iter().all(|f| f.revision.len() == 40 && f.dataset == "acme/own-layouts"));

    let files = client.parquet_files("acme/tiny-qa").await.unwrap();
    assert_eq!(
        layout(&files),
        [
            "default/train default/train/0000.parquet",
            "default/validation default/validation/0000.parquet",
            "extra/test extra/tiny-qa-test.parquet",
        ]
    );
    let main_sha = client.search("tiny-qa", 1).await.unwrap()[0].sha.clone().unwrap();
    assert!(files.iter().all(|f| f.revision.len() == 40 && f.revision != main_sha), "{files:?}");

    // A converted file reads like any other.
    let remote = client.open(&files[1]).await.unwrap();
    assert_eq!(remote.num_rows(), 10);
    assert_eq!(remote.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["question", "answer"]);
    let rows = remote.read_rows(&[0, 4, 9]).await.unwrap();
    assert_eq!(strings(&rows, "question"), ["validation question 0", "validation question 4", "validation question 9"]);
    assert_eq!(ints(&rows, "answer"), [0, 12, 27]);
    let all = remote.read_rows(&(0..10).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(all.num_rows(), 10);
    assert!(remote.read_rows(&[3, 3]).await.is_err());
    assert!(remote.read_rows(&[10]).await.is_err());

    let error = client.parquet_files("news/daily-corpus").await.unwrap_err();
    assert!(matches!(error, HubError::NoParquet { .. }), "{error}");
    assert!(error.to_string().contains("news/daily-corpus"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_a_large_dataset_with_range_requests() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let repo = root.join("datasets/acme/big-corpus");
    write_corpus_file(&repo.join("data/train-00000-of-00002.parquet"), "train", 0..120_000);
    write_corpus_file(&repo.join("data/train-00001-of-00002.parquet"), "train", 120_000..200_000);
    write_corpus_file(&repo.join("data/test-00000-of-00001.parquet"), "test", 0..2_000);
    let size: u64 = ["train-00000-of-00002", "train-00001-of-00002", "test-00000-of-00001"]
        .iter()
        .map(|name| std::fs::metadata(repo.join(format!("data/{name}.parquet"))).unwrap().len())
        .sum();
    let hub = TestHub::start(root, &[]);
    let client = hub_client(&hub, None);

    let datasets = ["acme/big-corpus".to_string()];
    let sample = sample_rows(&client, &datasets, 1_000, 42).await.unwrap();
    let sent = hub.stats()["bytes_sent"].as_u64().unwrap();
    println!(
        "sampled 1000 of 202000 rows: the hub sent {sent} bytes of {size} ({:.1}%), the client counted {}",
        100.0 * sent as f64 / size as f64,
        sample.bytes_fetched
    );
    assert!(sent * 2 < size, "sent {sent} of {size} bytes");
    assert_eq!(sample.bytes_fetched, sent);
    assert_eq!(sample.len(), 1_000);

    // Splits in order, each row as written and where the provenance says.
    let splits: Vec<(&str, &str)> = sample.groups.iter().map(|g| (g.config.as_str(), g.split.as_str())).collect();
    assert_eq!(splits, [("default", "test"), ("default", "train")]);
    for group in &sample.groups {
        assert_eq!(group.dataset, "acme/big-corpus");
        assert_eq!(group.origins.len(), group.batch.num_rows());
        let ids = ints(&group.batch, "id");
        let texts = strings(&group.batch, "text");
        let labels = strings(&group.batch, "label");
        assert!(group.origins.windows(2).all(|w| w[0].row < w[1].row));
        for (i, origin) in group.origins.iter().enumerate() {
            assert_eq!(ids[i] as u64, origin.row);
            assert_eq!(texts[i], long_text(&group.split, origin.row));
            assert_eq!(labels[i], label(origin.row));
            let (path, in_file) = match (group.split.as_str(), origin.row) {
                ("test", row) => ("data/test-00000-of-00001.parquet", row),
                (_, row) if row < 120_000 => ("data/train-00000-of-00002.parquet", row),
                (_, row) => ("data/train-00001-of-00002.parquet", row - 120_000),
            };
            assert_eq!((origin.path.as_str(), origin.row_in_file), (path, in_file));
        }
    }
    // About 1% of the rows are in the test split; rows come from both train files.
    let test_rows = sample.groups[0].batch.num_rows();
    assert!((1..=30).contains(&test_rows), "{test_rows} test rows");
    let train = &sample.groups[1].origins;
    assert!(train.iter().any(|o| o.row < 120_000) && train.iter().any(|o| o.row >= 120_000));

    // Only the needed row groups: a read of rows in one row group fetches a sliver of the file.
    let files = client.parquet_files("acme/big-corpus").await.unwrap();
    let remote = client.open(&files[1]).await.unwrap();
    assert_eq!((remote.num_rows(), remote.num_row_groups()), (120_000, 12));
    let footer = remote.bytes_fetched();
    let rows = remote.read_rows(&[10_000, 10_001, 19_999]).await.unwrap();
    assert_eq!(ints(&rows, "id"), [10_000, 10_001, 19_999]);
    let read = remote.bytes_fetched() - footer;
    println!("footer: {footer} bytes, 3 rows of one row group: {read} bytes, file: {} bytes", remote.len());
    assert!(read * 50 < remote.len(), "{read} bytes of {}", remote.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_seeded_and_mixes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_qa(dir.path());
    write_numbers(dir.path());
    let hub = TestHub::start(dir.path(), &[]);
    let client = hub_client(&hub, None);
    let datasets = ["acme/numbers".to_string(), "acme/tiny-qa".to_string()];

    // 145 rows in all: shares of 29 are 100/145 and 45/145 of it.
    let first = sample_rows(&client, &datasets, 29, 7).await.unwrap();
    let again = sample_rows(&client, &datasets, 29, 7).await.unwrap();
    let other = sample_rows(&client, &datasets, 29, 8).await.unwrap();
    assert_eq!(provenance(&first), provenance(&again));
    assert_ne!(provenance(&first), provenance(&other));
    for (a, b) in first.groups.iter().zip(&again.groups) {
        assert_eq!(a.batch, b.batch);
    }
    let per_dataset = |sample: &SampledRows, id: &str| -> usize {
        sample.groups.iter().filter(|g| g.dataset == id).map(|g| g.batch.num_rows()).sum()
    };
    assert_eq!((per_dataset(&first, "acme/numbers"), per_dataset(&first, "acme/tiny-qa")), (20, 9));

    // Each group keeps its dataset's own columns, and every row is the one its provenance names.
    for group in &first.groups {
        let columns: Vec<&str> = group.batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        if group.dataset == "acme/numbers" {
            assert_eq!((group.config.as_str(), group.split.as_str()), ("default", "train"));
            assert_eq!(columns, ["n", "square_root"]);
            let n = ints(&group.batch, "n");
            assert_eq!(n, group.origins.iter().map(|o| o.row as i64).collect::<Vec<_>>());
        } else {
            assert_eq!(columns, ["question", "answer"]);
            let prefix = if group.config == "extra" { "extra test".to_string() } else { group.split.clone() };
            let expected: Vec<String> = group.origins.iter().map(|o| format!("{prefix} question {}", o.row)).collect();
            assert_eq!(strings(&group.batch, "question"), expected);
        }
    }

    // A cap per dataset; all rows when fewer than asked; a split filter.
    let options = SampleOptions { per_dataset: Some(4), splits: None };
    let capped = sample_rows_with(&client, &datasets, 29, 7, &options).await.unwrap();
    assert_eq!((per_dataset(&capped, "acme/numbers"), per_dataset(&capped, "acme/tiny-qa")), (4, 4));
    let everything = sample_rows(&client, &datasets, 1_000, 1).await.unwrap();
    assert_eq!(everything.len(), 145);
    let options = SampleOptions { per_dataset: None, splits: Some(vec!["validation".into()]) };
    let validation = sample_rows_with(&client, &["acme/tiny-qa".to_string()], 100, 3, &options).await.unwrap();
    assert_eq!(validation.groups.len(), 1);
    assert_eq!((validation.groups[0].split.as_str(), validation.len()), ("validation", 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_dataset_and_url_and_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_qa(dir.path());

    let hub = TestHub::start(dir.path(), &[]);
    let error = hub_client(&hub, None).parquet_files("acme/missing").await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::NotFound { .. }), "{message}");
    assert!(message.contains("acme/missing") && message.contains(&format!("{}/api/datasets/acme/missing", hub.url)));
    assert!(matches!(hub_client(&hub, None).parquet_files("../etc").await, Err(HubError::BadId(_))));
    drop(hub);

    // The first two file requests fail with 503 and are retried.
    let hub = TestHub::start(dir.path(), &["--fail-first", "2"]);
    let sample = sample_rows(&hub_client(&hub, None), &["acme/tiny-qa".to_string()], 12, 5).await.unwrap();
    assert_eq!(sample.len(), 12);
    assert_eq!(hub.stats()["injected_failures"], 2);
    drop(hub);

    // Failures that outlast the retries say so, with the URL.
    let hub = TestHub::start(dir.path(), &["--fail-first", "100"]);
    let client = hub_client(&hub, None);
    let files = client.parquet_files("acme/tiny-qa").await.unwrap();
    let error = client.open(&files[0]).await.unwrap_err().to_string();
    assert!(error.contains("HTTP 503") && error.contains("4 attempt") && error.contains("/resolve/"), "{error}");
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_as_bearer_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_qa(dir.path());
    let token = "hf_test_secret_4242";
    let hub = TestHub::start(dir.path(), &["--token", token]);

    let client = hub_client(&hub, Some(token));
    assert_eq!(client.search("tiny", 5).await.unwrap().len(), 1);
    let sample = sample_rows(&client, &["acme/tiny-qa".to_string()], 5, 1).await.unwrap();
    assert_eq!(sample.len(), 5);
    assert_eq!(hub.stats()["unauthorized_requests"], 0);
    assert!(!format!("{client:?}").contains(token));
    let missing = client.parquet_files("acme/missing").await.unwrap_err().to_string();
    assert!(missing.contains("acme/missing") && !missing.contains(token), "{missing}");

    let anonymous = hub_client(&hub, None).parquet_files("acme/tiny-qa").await.unwrap_err();
    assert!(matches!(anonymous, HubError::Unauthorized { status: 401, .. }), "{anonymous}");
    assert!(anonymous.to_string().contains("HF_TOKEN"), "{anonymous}");
    let wrong = "hf_wrong_token_1717";
    let refused = hub_client(&hub, Some(wrong)).parquet_files("acme/tiny-qa").await.unwrap_err().to_string();
    assert!(refused.contains("acme/tiny-qa") && !refused.contains(wrong), "{refused}");
    assert_eq!(hub.stats()["unauthorized_requests"], 2);
}

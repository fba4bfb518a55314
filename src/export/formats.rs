//! The export formats: their Arrow schemas (what verl, TRL and `datasets` read) and how a record becomes a
//! row of each.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde_json::{Value, json};

use super::{ExportSettings, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExportFormat {
    /// verl's RL dataset: `data_source`, `prompt` (messages), `ability`, `reward_model`, `extra_info`.
    VerlRl,
    /// verl's SFT dataset: `messages`, `prompt`, `response`, `extra_info`.
    VerlSft,
    /// OpenAI-style `messages`, which TRL's SFTTrainer and `datasets` take as they are.
    Messages,
    /// `instruction`, `input`, `output` (JSONL).
    Alpaca,
    /// `conversations` of `{from, value}` (JSONL).
    ShareGpt,
    /// The run's rows as they are (JSONL).
    Jsonl,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 6] = [
        ExportFormat::VerlRl,
        ExportFormat::VerlSft,
        ExportFormat::Messages,
        ExportFormat::Alpaca,
        ExportFormat::ShareGpt,
        ExportFormat::Jsonl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::VerlRl => "verl-rl",
            ExportFormat::VerlSft => "verl-sft",
            ExportFormat::Messages => "messages",
            ExportFormat::Alpaca => "alpaca",
            ExportFormat::ShareGpt => "sharegpt",
            ExportFormat::Jsonl => "jsonl",
        }
    }

    pub fn parse(name: &str) -> Result<ExportFormat, String> {
        ExportFormat::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| {
            let names: Vec<&str> = ExportFormat::ALL.iter().map(|f| f.name()).collect();
            format!("unknown export format `{name}` (one of: {})", names.join(", "))
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::VerlRl | ExportFormat::VerlSft | ExportFormat::Messages => "parquet",
            _ => "jsonl",
        }
    }

    /// The Parquet schema (`None` for the JSONL formats).
    pub fn schema(self, _system: bool) -> Option<SchemaRef> {
        let fields = match self {
            ExportFormat::VerlRl => vec![
                Field::new("data_source", DataType::Utf8, false),
                Field::new("prompt", messages_type(), false),
                Field::new("ability", DataType::Utf8, false),
                Field::new("reward_model", DataType::Struct(reward_fields()), false),
                Field::new("extra_info", DataType::Struct(extra_info_fields()), false),
            ],
            ExportFormat::VerlSft => vec![
                Field::new("messages", messages_type(), false),
                Field::new("prompt", DataType::Utf8, false),
                Field::new("response", DataType::Utf8, false),
                Field::new("extra_info", DataType::Struct(extra_info_fields()), false),
            ],
            ExportFormat::Messages => {
                vec![Field::new("id", DataType::Utf8, false), Field::new("messages", messages_type(), false)]
            }
            _ => return None,
        };
        Some(Arc::new(Schema::new(fields)))
    }

    /// The schema in words, written into each Parquet file's metadata (`sdg.schema`).
    pub fn schema_doc(self) -> &'static str {
        match self {
            ExportFormat::VerlRl => {
                "verl-rl v1: data_source string; prompt list<struct<content string, role string>> (system?, user); ability string; reward_model struct<ground_truth string, style string='rule'>; extra_info struct<index int64, split string, id string, source string?, category string?, pass_rate double?>"
            }
            ExportFormat::VerlSft => {
                "verl-sft v1: messages list<struct<content string, role string>> (system?, user, assistant); prompt string; response string; extra_info struct<index int64, split string, id string, source string?, category string?, pass_rate double?>"
            }
            ExportFormat::Messages => {
                "messages v1: id string; messages list<struct<content string, role string>> (system?, user, assistant)"
            }
            ExportFormat::Alpaca => "alpaca v1: instruction, input, output",
            ExportFormat::ShareGpt => "sharegpt v1: conversations [{from: system|human|gpt, value}]",
            ExportFormat::Jsonl => "jsonl: the run's rows as they are",
        }
    }
}

fn message_fields() -> Fields {
    Fields::from(vec![Field::new("content", DataType::Utf8, false), Field::new("role", DataType::Utf8, false)])
}

fn messages_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(message_fields()), false))
}

fn messages_type() -> DataType {
    DataType::List(messages_item())
}

fn reward_fields() -> Fields {
    Fields::from(vec![Field::new("ground_truth", DataType::Utf8, false), Field::new("style", DataType::Utf8, false)])
}

fn extra_info_fields() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("pass_rate", DataType::Float64, true),
    ])
}

/// The conversation of a record: the system message (if any), the prompt, and the response when
/// `with_response`.
pub fn conversation<'a>(
    record: &Record<'a>,
    system: Option<&'a str>,
    with_response: bool,
) -> Vec<(&'static str, &'a str)> {
    let mut turns = Vec::with_capacity(3);
    if let Some(system) = system {
        turns.push(("system", system));
    }
    turns.push(("user", record.prompt));
    if with_response {
        turns.push(("assistant", record.response));
    }
    turns
}

fn messages_array(conversations: &[Vec<(&str, &str)>]) -> ListArray {
    let mut offsets = Vec::with_capacity(conversations.len() + 1);
    offsets.push(0i32);
    let (mut contents, mut roles) = (Vec::new(), Vec::new());
    for turns in conversations {
        for (role, content) in turns {
            roles.push(*role);
            contents.push(*content);
        }
        offsets.push(contents.len() as i32);
    }
    let values = StructArray::new(
        message_fields(),
        vec![Arc::new(StringArray::from(contents)) as ArrayRef, Arc::new(StringArray::from(roles))],
        None,
    );
    ListArray::new(messages_item(), OffsetBuffer::new(offsets.into()), Arc::new(values), None)
}

fn extra_info(records: &[(usize, Record)], split: &str, first_index: u64) -> StructArray {
    let n = records.len();
    StructArray::new(
        extra_info_fields(),
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| (first_index + i as u64) as i64))) as ArrayRef,
            Arc::new(StringArray::from(vec![split; n])),
            Arc::new(StringArray::from_iter_values(records.iter().map(|(_, r)| r.id))),
            Arc::new(StringArray::from_iter(records.iter().map(|(_, r)| r.hub_dataset.or(r.source)))),
            Arc::new(StringArray::from_iter(records.iter().map(|(_, r)| r.category))),
            Arc::new(Float64Array::from_iter(records.iter().map(|(_, r)| r.pass_rate))),
        ],
        None,
    )
}

/// The rows of a Parquet format for `records` of `split`, numbered from `first_index`.
pub fn parquet_batch(
    format: ExportFormat,
    settings: &ExportSettings,
    split: &str,
    first_index: u64,
    records: &[(usize, Record)],
) -> Result<RecordBatch, String> {
    let schema = format.schema(settings.system.is_some()).ok_or("not a Parquet format")?;
    let system = settings.system.as_deref();
    let columns: Vec<ArrayRef> = match format {
        ExportFormat::VerlRl => {
            let prompts: Vec<Vec<(&str, &str)>> = records.iter().map(|(_, r)| conversation(r, system, false)).collect();
            let reward = StructArray::new(
                reward_fields(),
                vec![
                    Arc::new(StringArray::from_iter_values(records.iter().map(|(_, r)| r.answer))) as ArrayRef,
                    Arc::new(StringArray::from(vec!["rule"; records.len()])),
                ],
                None,
            );
            vec![
                Arc::new(StringArray::from_iter_values(
                    records.iter().map(|(_, r)| r.hub_dataset.unwrap_or(settings.data_source.as_str())),
                )),
                Arc::new(messages_array(&prompts)),
                Arc::new(StringArray::from(vec![settings.ability.as_str(); records.len()])),
                Arc::new(reward),
                Arc::new(extra_info(records, split, first_index)),
            ]
        }
        ExportFormat::VerlSft => {
            let conversations: Vec<Vec<(&str, &str)>> =
                records.iter().map(|(_, r)| conversation(r, system, true)).collect();
            vec![
                Arc::new(messages_array(&conversations)),
                Arc::new(StringArray::from_iter_values(records.iter().map(|(_, r)| r.prompt))),
                Arc::new(StringArray::from_iter_values(records.iter().map(|(_, r)| r.response))),
                Arc::new(extra_info(records, split, first_index)),
            ]
        }
        ExportFormat::Messages => {
            let conversations: Vec<Vec<(&str, &str)>> =
                records.iter().map(|(_, r)| conversation(r, system, true)).collect();
            vec![
                Arc::new(StringArray::from_iter_values(records.iter().map(|(_, r)| r.id))),
                Arc::new(messages_array(&conversations)),
            ]
        }
        _ => return Err("not a Parquet format".to_string()),
    };
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

/// A record as a JSON line of alpaca or sharegpt.
pub fn json_record(format: ExportFormat, settings: &ExportSettings, record: &Record) -> Value {
    match format {
        ExportFormat::Alpaca => {
            let mut value = json!({"instruction": record.prompt, "input": "", "output": record.response});
            if let Some(system) = &settings.system {
                value["system"] = json!(system);
            }
            value
        }
        _ => {
            let conversations: Vec<Value> = conversation(record, settings.system.as_deref(), true)
                .into_iter()
                .map(|(role, content)| {
                    let from = match role {
                        "user" => "human",
                        "assistant" => "gpt",
                        other => other,
                    };
                    json!({"from": from, "value": content})
                })
                .collect();
            json!({"conversations": conversations})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &'static str) -> Record<'static> {
        Record {
            id,
            prompt: "What is 2+2?",
            response: "2+2 is 4.\n#### 4",
            answer: "4",
            source: Some("corpus/a.txt"),
            hub_dataset: None,
            category: Some("learnable"),
            pass_rate: Some(0.5),
        }
    }

    #[test]
    fn verl_rl_rows_have_verls_types_and_values() {
        let settings = ExportSettings { system: Some("Be brief.".into()), ..Default::default() };
        let records = vec![(0, record("a")), (1, record("b"))];
        let batch = parquet_batch(ExportFormat::VerlRl, &settings, "train", 10, &records).unwrap();
        let schema = batch.schema();
        assert_eq!(
            schema.field_with_name("prompt").unwrap().data_type().to_string(),
            "List(non-null Struct(\"content\": non-null Utf8, \"role\": non-null Utf8))"
        );
        let json = crate::io::json_rows::row_to_json(&batch, 1).unwrap();
        assert_eq!(json["data_source"], "sdg");
        assert_eq!(json["prompt"][0]["role"], "system");
        assert_eq!(json["prompt"][1]["content"], "What is 2+2?");
        assert_eq!(json["reward_model"]["ground_truth"], "4");
        assert_eq!(json["reward_model"]["style"], "rule");
        assert_eq!(json["extra_info"]["index"], 11);
        assert_eq!(json["extra_info"]["id"], "b");
        assert_eq!(json["extra_info"]["pass_rate"], 0.5);
    }

    #[test]
    fn messages_and_jsonl_formats_hold_the_conversation() {
        let settings = ExportSettings::default();
        let batch = parquet_batch(ExportFormat::Messages, &settings, "train", 0, &[(0, record("a"))]).unwrap();
        let json = crate::io::json_rows::row_to_json(&batch, 0).unwrap();
        assert_eq!(json["messages"].as_array().unwrap().len(), 2);
        assert_eq!(json["messages"][1]["role"], "assistant");
        let alpaca = json_record(ExportFormat::Alpaca, &settings, &record("a"));
        assert_eq!(alpaca, json!({"instruction": "What is 2+2?", "input": "", "output": "2+2 is 4.\n#### 4"}));
        let sharegpt = json_record(ExportFormat::ShareGpt, &settings, &record("a"));
        assert_eq!(sharegpt["conversations"][0]["from"], "human");
        assert_eq!(sharegpt["conversations"][1]["from"], "gpt");
        assert!(ExportFormat::parse("verl").unwrap_err().contains("verl-rl"));
    }
}

//! The unit that flows between timely operators: an Arrow record batch, plus where it must go.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    /// Rows that go on downstream.
    Rows,
    /// Dropped rows in the rejects schema.
    Rejects,
}

/// A record batch in flight. `dest` is the routing key an exchange uses (key % workers); it means nothing
/// on pipeline edges. Between processes the batch travels as Arrow IPC.
#[derive(Debug, Clone)]
pub struct Packet {
    pub lane: Lane,
    pub dest: u64,
    pub batch: RecordBatch,
}

impl Packet {
    pub fn rows(batch: RecordBatch) -> Self {
        Packet { lane: Lane::Rows, dest: 0, batch }
    }

    pub fn rejects(batch: RecordBatch) -> Self {
        Packet { lane: Lane::Rejects, dest: 0, batch }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    lane: Lane,
    dest: u64,
    #[serde(with = "serde_bytes_compat")]
    ipc: Vec<u8>,
}

/// Serialize a Vec<u8> as a byte string rather than a sequence of numbers.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Vec::<u8>::deserialize(d)
    }
}

/// Encodes a batch as an Arrow IPC stream.
pub fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Decodes a batch written by [`to_ipc`].
pub fn from_ipc(bytes: &[u8]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    match reader.next() {
        Some(batch) => batch,
        None => Ok(RecordBatch::new_empty(Arc::clone(&schema))),
    }
}

impl Serialize for Packet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ipc = to_ipc(&self.batch).map_err(S::Error::custom)?;
        Wire { lane: self.lane, dest: self.dest, ipc }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Packet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let batch = from_ipc(&wire.ipc).map_err(D::Error::custom)?;
        Ok(Packet { lane: wire.lane, dest: wire.dest, batch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn ipc_round_trip_keeps_schema_and_values() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::UInt64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(UInt64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let back = from_ipc(&to_ipc(&batch).unwrap()).unwrap();
        assert_eq!(back, batch);
        let empty = RecordBatch::new_empty(batch.schema());
        assert_eq!(from_ipc(&to_ipc(&empty).unwrap()).unwrap().schema(), batch.schema());
    }
}

//! Arrow rows as JSON objects (JSONL sink, reject records).

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

use sdg_operators::OpError;

/// Row `row` of `batch` as a JSON object, columns in schema order.
pub fn row_to_json(batch: &RecordBatch, row: usize) -> Result<Value, OpError> {
    let mut object = Map::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        object.insert(field.name().clone(), cell_to_json(column.as_ref(), row)?);
    }
    Ok(Value::Object(object))
}

fn cell_to_json(array: &dyn Array, row: usize) -> Result<Value, OpError> {
    use arrow::array::AsArray;
    use arrow::datatypes::*;
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float32 => number(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => number(array.as_primitive::<Float64Type>().value(row)),
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| cell_to_json(list.as_ref(), i)).collect::<Result<_, _>>()?)
        }
        DataType::Struct(fields) => {
            let strukt = array.as_struct();
            let mut object = Map::new();
            for (field, column) in fields.iter().zip(strukt.columns()) {
                object.insert(field.name().clone(), cell_to_json(column.as_ref(), row)?);
            }
            Value::Object(object)
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            Value::String(formatter.value(row).to_string())
        }
    })
}

fn number(value: f64) -> Value {
    Number::from_f64(value).map(Value::Number).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn renders_strings_numbers_and_nulls() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("s", DataType::Utf8, true),
                Field::new("n", DataType::UInt32, false),
                Field::new("f", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![None, Some("x")])),
                Arc::new(UInt32Array::from(vec![1, 2])),
                Arc::new(Float64Array::from(vec![0.5, f64::NAN])),
            ],
        )
        .unwrap();
        assert_eq!(row_to_json(&batch, 0).unwrap().to_string(), r#"{"s":null,"n":1,"f":0.5}"#);
        assert_eq!(row_to_json(&batch, 1).unwrap().to_string(), r#"{"s":"x","n":2,"f":null}"#);
    }
}

//! `project`: keeps, orders and renames columns (used by sinks).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::Deserialize;

use crate::{OpError, Operator, Output};

/// Which columns a sink writes, in order, and under which names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    /// Columns to keep, in this order. Empty keeps every column.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Renames, old name -> new name, applied after selection.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// Selects and renames columns.
pub struct Project {
    spec: ProjectSpec,
}

impl Project {
    pub fn new(spec: ProjectSpec) -> Self {
        Project { spec }
    }

    fn indices(&self, schema: &Schema) -> Result<Vec<usize>, OpError> {
        if self.spec.columns.is_empty() {
            return Ok((0..schema.fields().len()).collect());
        }
        self.spec
            .columns
            .iter()
            .map(|name| {
                schema.index_of(name).map_err(|_| OpError::MissingColumn {
                    column: name.clone(),
                    expected: "a column listed in `columns`".to_string(),
                })
            })
            .collect()
    }
}

impl Operator for Project {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let indices = self.indices(input)?;
        for old in self.spec.rename.keys() {
            if !indices.iter().any(|&i| input.field(i).name() == old) {
                return Err(OpError::MissingColumn { column: old.clone(), expected: "a column to rename".to_string() });
            }
        }
        let fields: Vec<Field> = indices
            .iter()
            .map(|&i| {
                let field = input.field(i);
                match self.spec.rename.get(field.name()) {
                    Some(new) => field.clone().with_name(new),
                    None => field.clone(),
                }
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for field in &fields {
            if !seen.insert(field.name().clone()) {
                return Err(OpError::setting("rename", format!("two output columns are named `{}`", field.name())));
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let indices = self.indices(&batch.schema())?;
        let columns = indices.iter().map(|&i| Arc::clone(batch.column(i))).collect();
        Ok(Output { rows: RecordBatch::try_new(schema, columns)?, rejects: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt32Array};
    use arrow::datatypes::DataType;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            Field::new("n", DataType::UInt32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(StringArray::from(vec!["hello"])),
                Arc::new(UInt32Array::from(vec![7])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn selects_orders_and_renames() {
        let mut op = Project::new(ProjectSpec {
            columns: vec!["text".into(), "id".into()],
            rename: [("text".to_string(), "content".to_string())].into(),
        });
        let out = op.process(batch()).unwrap().rows;
        let names: Vec<_> = out.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["content", "id"]);
        assert_eq!(out.num_rows(), 1);
    }

    #[test]
    fn refuses_unknown_columns_and_name_clashes() {
        let schema = batch().schema();
        let missing = Project::new(ProjectSpec { columns: vec!["nope".into()], ..Default::default() });
        assert!(missing.output_schema(&schema).is_err());
        let clash =
            Project::new(ProjectSpec { columns: vec![], rename: [("text".to_string(), "id".to_string())].into() });
        assert!(clash.output_schema(&schema).is_err());
    }
}

//! The declared record schema, and decoding JSON records into Arrow columns.
//!
//! A schema file is JSON:
//! ```json
//! {"fields": [{"name": "id", "type": "string", "nullable": false},
//!             {"name": "text", "type": "string"},
//!             {"name": "ts", "type": "timestamp"}]}
//! ```
//! Types: `string`, `int64`, `float64`, `bool`, `timestamp` (RFC 3339 string or
//! epoch milliseconds; stored as UTC milliseconds). `nullable` defaults to true.
//! Fields not in the schema are ignored. The default is the corpus schema above.
//!
//! Every record is checked on its own ([`RecordSchema::validate`]) so a bad one
//! is rejected with a precise reason and goes to the dead-letter topic, while
//! its neighbours are written.

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use std::sync::Arc;

/// A column type of the declared schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// The declared schema of the records' JSON payloads.
#[derive(Clone, Debug, Deserialize)]
pub struct RecordSchema {
    pub fields: Vec<FieldSpec>,
}

/// Why one record was rejected (the DLQ's `error` header).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is {len} bytes; the limit is {max}")]
    Oversized { len: usize, max: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("field {field:?} is required and missing or null")]
    Missing { field: String },
    #[error("field {field:?}: expected {expected}, got {got}")]
    WrongType {
        field: String,
        expected: &'static str,
        got: String,
    },
}

impl RecordError {
    /// Short machine-readable reason (metric label, DLQ header).
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::Oversized { .. } => "oversized",
            RecordError::NotJson(_) => "not_json",
            RecordError::NotObject => "not_object",
            RecordError::Missing { .. } => "schema_missing_field",
            RecordError::WrongType { .. } => "schema_type_mismatch",
        }
    }
}

/// A value that passed validation, ready to append.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Milliseconds since the Unix epoch, UTC.
    TsMs(i64),
}

/// Kafka metadata carried into the metadata columns.
#[derive(Clone, Debug)]
pub struct Meta {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<String>,
}

/// Names of the metadata columns appended after the declared fields.
pub const META_COLUMNS: [&str; 4] = ["_partition", "_offset", "_timestamp", "_key"];

impl Default for RecordSchema {
    fn default() -> Self {
        let f = |name: &str, ty, nullable| FieldSpec {
            name: name.into(),
            ty,
            nullable,
        };
        RecordSchema {
            fields: vec![
                f("id", FieldType::String, false),
                f("text", FieldType::String, true),
                f("ts", FieldType::Timestamp, true),
            ],
        }
    }
}

fn type_name(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(_) => "a boolean".into(),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) => {
            let short: String = s.chars().take(32).collect();
            format!("the string {short:?}")
        }
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

impl RecordSchema {
    /// Loads and checks a schema file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, crate::Error> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
            op: "read schema",
            path: path.to_path_buf(),
            source,
        })?;
        let s: RecordSchema = serde_json::from_str(&text).map_err(|e| crate::Error::Schema {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if s.fields.is_empty() {
            return Err(crate::Error::Schema {
                path: path.to_path_buf(),
                reason: "no fields".into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &s.fields {
            if f.name.starts_with('_') || !seen.insert(f.name.clone()) {
                return Err(crate::Error::Schema {
                    path: path.to_path_buf(),
                    reason: format!(
                        "field {:?} is duplicated or starts with '_' (reserved for metadata columns)",
                        f.name
                    ),
                });
            }
        }
        Ok(s)
    }

    /// The Arrow schema: declared fields, then the metadata columns.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .fields
            .iter()
            .map(|f| {
                let dt = match f.ty {
                    FieldType::String => DataType::Utf8,
                    FieldType::Int64 => DataType::Int64,
                    FieldType::Float64 => DataType::Float64,
                    FieldType::Bool => DataType::Boolean,
                    FieldType::Timestamp => {
                        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
                    }
                };
                Field::new(&f.name, dt, f.nullable)
            })
            .collect();
        fields.push(Field::new("_partition", DataType::Int32, false));
        fields.push(Field::new("_offset", DataType::Int64, false));
        fields.push(Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ));
        fields.push(Field::new("_key", DataType::Utf8, true));
        Arc::new(Schema::new(fields))
    }

    /// Checks one payload against the schema; returns its values in field order.
    pub fn validate(&self, payload: &[u8], max_bytes: usize) -> Result<Vec<Value>, RecordError> {
        if payload.len() > max_bytes {
            return Err(RecordError::Oversized {
                len: payload.len(),
                max: max_bytes,
            });
        }
        let v: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| RecordError::NotJson(e.to_string()))?;
        let serde_json::Value::Object(mut obj) = v else {
            return Err(RecordError::NotObject);
        };
        let mut out = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let v = obj.remove(&f.name).unwrap_or(serde_json::Value::Null);
            if v.is_null() {
                if !f.nullable {
                    return Err(RecordError::Missing {
                        field: f.name.clone(),
                    });
                }
                out.push(Value::Null);
                continue;
            }
            let wrong = |expected: &'static str, v: &serde_json::Value| RecordError::WrongType {
                field: f.name.clone(),
                expected,
                got: type_name(v),
            };
            out.push(match f.ty {
                FieldType::String => match v {
                    serde_json::Value::String(s) => Value::Str(s),
                    other => return Err(wrong("a string", &other)),
                },
                FieldType::Int64 => match v.as_i64() {
                    Some(i) => Value::I64(i),
                    None => return Err(wrong("a 64-bit integer", &v)),
                },
                FieldType::Float64 => match v.as_f64() {
                    Some(x) => Value::F64(x),
                    None => return Err(wrong("a number", &v)),
                },
                FieldType::Bool => match v.as_bool() {
                    Some(b) => Value::Bool(b),
                    None => return Err(wrong("a boolean", &v)),
                },
                FieldType::Timestamp => match &v {
                    serde_json::Value::Number(n) if n.as_i64().is_some() => {
                        Value::TsMs(n.as_i64().unwrap_or_default())
                    }
                    serde_json::Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                        Ok(t) => Value::TsMs(t.timestamp_millis()),
                        Err(_) => {
                            return Err(wrong("an RFC 3339 timestamp or epoch milliseconds", &v));
                        }
                    },
                    _ => return Err(wrong("an RFC 3339 timestamp or epoch milliseconds", &v)),
                },
            });
        }
        Ok(out)
    }
}

/// Column builders for one open file's pending rows.
pub struct Rows {
    schema: SchemaRef,
    types: Vec<FieldType>,
    cols: Vec<Col>,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: StringBuilder,
    len: usize,
}

enum Col {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder),
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Rows {
    pub fn new(schema: &RecordSchema) -> Self {
        let cols = schema
            .fields
            .iter()
            .map(|f| match f.ty {
                FieldType::String => Col::Str(StringBuilder::new()),
                FieldType::Int64 => Col::I64(Int64Builder::new()),
                FieldType::Float64 => Col::F64(Float64Builder::new()),
                FieldType::Bool => Col::Bool(BooleanBuilder::new()),
                FieldType::Timestamp => {
                    Col::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC"))
                }
            })
            .collect();
        Rows {
            schema: schema.arrow_schema(),
            types: schema.fields.iter().map(|f| f.ty).collect(),
            cols,
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            key: StringBuilder::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one validated record (values in schema order).
    pub fn push(&mut self, values: Vec<Value>, meta: &Meta) {
        debug_assert_eq!(values.len(), self.types.len());
        for (col, v) in self.cols.iter_mut().zip(values) {
            match (col, v) {
                (Col::Str(b), Value::Str(s)) => b.append_value(s),
                (Col::I64(b), Value::I64(i)) => b.append_value(i),
                (Col::F64(b), Value::F64(x)) => b.append_value(x),
                (Col::Bool(b), Value::Bool(x)) => b.append_value(x),
                (Col::Ts(b), Value::TsMs(t)) => b.append_value(t),
                (Col::Str(b), _) => b.append_null(),
                (Col::I64(b), _) => b.append_null(),
                (Col::F64(b), _) => b.append_null(),
                (Col::Bool(b), _) => b.append_null(),
                (Col::Ts(b), _) => b.append_null(),
            }
        }
        self.partition.append_value(meta.partition);
        self.offset.append_value(meta.offset);
        self.timestamp.append_option(meta.timestamp_ms);
        self.key.append_option(meta.key.as_deref());
        self.len += 1;
    }

    /// Takes the pending rows as one batch (the builders start empty again).
    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Col::Str(b) => Arc::new(b.finish()),
                    Col::I64(b) => Arc::new(b.finish()),
                    Col::F64(b) => Arc::new(b.finish()),
                    Col::Bool(b) => Arc::new(b.finish()),
                    Col::Ts(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        arrays.push(Arc::new(self.partition.finish()));
        arrays.push(Arc::new(self.offset.finish()));
        arrays.push(Arc::new(self.timestamp.finish()));
        arrays.push(Arc::new(self.key.finish()));
        self.len = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_records_validate_and_bad_ones_say_why() {
        let s = RecordSchema::default();
        let ok = s
            .validate(
                br#"{"id":"a1","text":"hi","ts":"2026-11-23T01:02:03Z","extra":1}"#,
                1024,
            )
            .expect("valid");
        assert_eq!(ok[0], Value::Str("a1".into()));
        assert_eq!(ok[2], Value::TsMs(1_795_395_723_000));
        assert_eq!(
            s.validate(br#"{"id":"a","ts":1700000000000}"#, 1024)
                .expect("epoch ms")[2],
            Value::TsMs(1_700_000_000_000)
        );
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "not_json"),
            (b"[1,2]", "not_object"),
            (br#"{"text":"no id"}"#, "schema_missing_field"),
            (br#"{"id":7}"#, "schema_type_mismatch"),
            (br#"{"id":"x","ts":"yesterday"}"#, "schema_type_mismatch"),
            (&[b'x'; 2000], "oversized"),
        ];
        for (payload, kind) in cases {
            let e = s.validate(payload, 1024).expect_err("must be rejected");
            assert_eq!(e.kind(), kind, "{e}");
        }
        let e = s.validate(br#"{"id":7}"#, 1024).expect_err("wrong type");
        assert_eq!(
            e.to_string(),
            "field \"id\": expected a string, got the number 7"
        );
    }

    #[test]
    fn rows_become_a_batch_with_metadata_columns() {
        let s = RecordSchema::default();
        let mut rows = Rows::new(&s);
        for i in 0..3 {
            let v = s
                .validate(format!(r#"{{"id":"r{i}","text":null}}"#).as_bytes(), 1024)
                .expect("valid");
            rows.push(
                v,
                &Meta {
                    partition: 2,
                    offset: 10 + i,
                    timestamp_ms: Some(5),
                    key: None,
                },
            );
        }
        let b = rows.finish().expect("batch");
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.num_columns(), 3 + META_COLUMNS.len());
        assert_eq!(b.schema().field(4).name(), "_offset");
        assert!(rows.is_empty());
    }
}

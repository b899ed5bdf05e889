//! The body of a snapshot file: its records and their two encodings. This binary writes
//! MessagePack records (state rows as they are stored, then job-log chunks, then an
//! `end` record); earlier versions wrote JSON lines holding one whole-state record,
//! which are still read.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Write};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tanvrit_api::{AttemptId, JobId};
use tanvrit_state::{State, Table};

use crate::{JobLogChunk, StoreError};

/// The body encoding of earlier versions: JSON lines.
pub(crate) const ENCODING_JSON: &str = "json-stream";
/// The body encoding this binary writes: MessagePack records, one after another.
pub(crate) const ENCODING_MSGPACK: &str = "msgpack-stream";

const WHAT: &str = "snapshot file";

fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: WHAT,
        detail: detail.into(),
    }
}

/// One item of a snapshot, as a reader hands it over.
#[derive(Debug)]
pub enum SnapshotItem {
    /// A whole state (files of earlier versions hold one, first).
    State(Box<State>),
    /// A stored state row: its table, key and value bytes (see `state_tables`).
    Row(Table, String, Vec<u8>),
    /// A job-log chunk (after the state or its rows).
    Chunk(JobLogChunk),
}

/// Bytes that encode as MessagePack `bin` (JSON has no bytes; it never holds rows).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Owned bytes read back from `bin` (or from a sequence of numbers).
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                let mut out = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(ByteBuf(out))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordRef<'a, S> {
    State(&'a S),
    Row(RowRef<'a>),
    Chunk(ChunkRef<'a>),
    End { records: u64 },
}

#[derive(Serialize)]
pub(crate) struct RowRef<'a> {
    table: &'a str,
    key: &'a str,
    value: Bytes<'a>,
}

impl<'a> RowRef<'a> {
    pub(crate) fn new(table: Table, key: &'a str, value: &'a [u8]) -> Self {
        RowRef {
            table: table.name(),
            key,
            value: Bytes(value),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct ChunkRef<'a> {
    pub(crate) job: &'a str,
    pub(crate) attempt: &'a str,
    pub(crate) offset: u64,
    pub(crate) data: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Record {
    State(Box<State>),
    Row(RowWire),
    Chunk(ChunkWire),
    End { records: u64 },
}

#[derive(Deserialize)]
pub(crate) struct RowWire {
    table: String,
    key: String,
    value: ByteBuf,
}

#[derive(Deserialize)]
pub(crate) struct ChunkWire {
    job: JobId,
    attempt: AttemptId,
    offset: u64,
    data: String,
}

/// Writes one record in this binary's encoding.
pub(crate) fn write_record<S: Serialize>(
    out: &mut impl Write,
    record: &RecordRef<'_, S>,
) -> Result<(), StoreError> {
    rmp_serde::encode::write_named(out, record).map_err(|e| StoreError::Encode {
        what: WHAT,
        detail: e.to_string(),
    })
}

type JsonRecords =
    serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<File>>, Record>;

/// Reads a body's records in either encoding.
pub(crate) enum BodyReader {
    Json(Box<JsonRecords>),
    Msgpack(Box<rmp_serde::Deserializer<rmp_serde::decode::ReadReader<BufReader<File>>>>),
}

impl BodyReader {
    /// A reader of `encoding` over `reader` (positioned at the body).
    pub(crate) fn new(encoding: &str, reader: BufReader<File>) -> Result<Self, StoreError> {
        match encoding {
            ENCODING_JSON => Ok(BodyReader::Json(Box::new(
                serde_json::Deserializer::from_reader(reader).into_iter(),
            ))),
            ENCODING_MSGPACK => Ok(BodyReader::Msgpack(Box::new(rmp_serde::Deserializer::new(
                reader,
            )))),
            other => Err(corrupt(format!("unknown body encoding `{other}`"))),
        }
    }

    fn next(&mut self) -> Result<Record, StoreError> {
        match self {
            BodyReader::Json(records) => match records.next() {
                Some(Ok(record)) => Ok(record),
                Some(Err(err)) => Err(corrupt(err.to_string())),
                None => Err(corrupt("ends before its end record")),
            },
            BodyReader::Msgpack(de) => Record::deserialize(&mut **de).map_err(|err| match err {
                rmp_serde::decode::Error::InvalidMarkerRead(_)
                | rmp_serde::decode::Error::InvalidDataRead(_) => {
                    corrupt(format!("ends before its end record ({err})"))
                }
                other => corrupt(other.to_string()),
            }),
        }
    }

    /// Hands every item to `on_item` until the end record (checking its count) or until
    /// `on_item` answers `false` (the caller has what it needs).
    pub(crate) fn for_each(
        mut self,
        mut on_item: impl FnMut(SnapshotItem) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut seen = 0u64;
        loop {
            let item = match self.next()? {
                Record::End { records } if records == seen => return Ok(()),
                Record::End { records } => {
                    return Err(corrupt(format!(
                        "the end record counts {records} records, the file holds {seen}"
                    )))
                }
                Record::State(state) if seen == 0 => SnapshotItem::State(state),
                Record::State(_) => return Err(corrupt("a state record after the first")),
                Record::Row(row) => {
                    let table = Table::from_name(&row.table)
                        .ok_or_else(|| corrupt(format!("unknown table `{}`", row.table)))?;
                    SnapshotItem::Row(table, row.key, row.value.0)
                }
                Record::Chunk(chunk) => SnapshotItem::Chunk(JobLogChunk {
                    job: chunk.job,
                    attempt: chunk.attempt,
                    offset: chunk.offset,
                    data: chunk.data.into_bytes(),
                }),
            };
            seen += 1;
            if !on_item(item)? {
                return Ok(());
            }
        }
    }
}

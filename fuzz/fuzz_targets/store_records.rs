//! Stored records (crates/store): every record decoder takes arbitrary bytes without
//! panicking, and whatever decodes re-encodes to bytes that decode to the same value
//! (a replica that reads a record and writes it back never changes it).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use tanvrit_cluster::raft::types::{Entry, LogId, SnapshotMeta, Vote};
use tanvrit_store::{log, raft, snapshot, StoreError};

fn round_trip<T: PartialEq + Debug>(
    decoded: T,
    encode: impl Fn(&T) -> Result<Vec<u8>, StoreError>,
    decode: impl Fn(&[u8]) -> Result<T, StoreError>,
) {
    let bytes = encode(&decoded).expect("a decoded record encodes");
    let again = decode(&bytes).expect("a re-encoded record decodes");
    assert_eq!(decoded, again, "the record changed on a round trip");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = log::decode_log_record(data) {
        round_trip(command, log::encode_log_record, log::decode_log_record);
    }
    if let Ok(record) = snapshot::decode_snapshot_record(data) {
        round_trip(
            record,
            |(index, state)| snapshot::encode_snapshot_record(*index, state),
            snapshot::decode_snapshot_record,
        );
    }
    if let Ok(entry) = raft::decode_raft_entry::<Entry>(data) {
        round_trip(entry, raft::encode_raft_entry, raft::decode_raft_entry);
    }
    if let Ok(vote) = raft::decode_raft_value::<Vote>(data) {
        round_trip(vote, raft::encode_raft_value, raft::decode_raft_value);
    }
    if let Ok(committed) = raft::decode_raft_value::<Option<LogId>>(data) {
        round_trip(committed, raft::encode_raft_value, raft::decode_raft_value);
    }
    if let Ok(record) = raft::decode_raft_snapshot::<SnapshotMeta>(data) {
        round_trip(
            record,
            |(meta, state)| raft::encode_raft_snapshot(meta, state),
            raft::decode_raft_snapshot,
        );
    }
});

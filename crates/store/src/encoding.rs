//! Versioned record envelopes: every stored record is serde_json `{"v": N, ...}`.
//!
//! A record is decoded as the current version first (the fast path, one parse); only
//! when that fails is its `v` read alone, so an unknown version gets a clear error
//! instead of a confusing decode message. A future version adds a migrate step here.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The version every record is written with today.
pub const RECORD_VERSION: u64 = 1;

#[derive(Deserialize)]
struct Head {
    v: u64,
}

/// Encodes a record (which must carry `v`).
pub(crate) fn encode<T: Serialize>(what: &'static str, record: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })
}

/// Decodes a record of the current version, or explains why it cannot.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    version_of: impl FnOnce(&T) -> u64,
) -> Result<T, StoreError> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(record) => {
            let found = version_of(&record);
            if found == RECORD_VERSION {
                Ok(record)
            } else {
                Err(StoreError::UnsupportedRecord {
                    what,
                    found,
                    supported: RECORD_VERSION,
                })
            }
        }
        Err(err) => match serde_json::from_slice::<Head>(bytes) {
            Ok(head) if head.v != RECORD_VERSION => Err(StoreError::UnsupportedRecord {
                what,
                found: head.v,
                supported: RECORD_VERSION,
            }),
            _ => Err(StoreError::Corrupt {
                what,
                detail: err.to_string(),
            }),
        },
    }
}

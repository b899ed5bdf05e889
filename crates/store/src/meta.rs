//! Small named values kept next to the data (the cluster id, ...).

use redb::ReadableDatabase;

use crate::{Store, StoreError, META, META_FORMAT_VERSION, META_LOG_PURGED};

/// Keys the store manages itself; `meta_put` refuses them.
const RESERVED: [&str; 2] = [META_FORMAT_VERSION, META_LOG_PURGED];

impl Store {
    /// Reads a small value.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(META)?;
        let value = table.get(key)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    /// Writes a small value durably. The store's own keys are refused.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if RESERVED.contains(&key) {
            return Err(StoreError::ReservedKey(key.to_string()));
        }
        let txn = self.db().begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// Removes a small value durably (absent is fine). The store's own keys are refused.
    pub fn meta_delete(&self, key: &str) -> Result<(), StoreError> {
        if RESERVED.contains(&key) {
            return Err(StoreError::ReservedKey(key.to_string()));
        }
        let txn = self.db().begin_write()?;
        txn.open_table(META)?.remove(key)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreError};

    #[test]
    fn meta_values_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.meta_get("cluster_id").unwrap(), None);
            store.meta_put("cluster_id", b"c-1").unwrap();
            store.meta_put("cluster_id", b"c-2").unwrap();
            store.meta_put("rejoining", b"1").unwrap();
            store.meta_delete("rejoining").unwrap();
            store.meta_delete("never_written").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.meta_get("cluster_id").unwrap().unwrap(), b"c-2");
        assert_eq!(store.meta_get("rejoining").unwrap(), None);
    }

    #[test]
    fn meta_put_refuses_the_store_s_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store.meta_put("format_version", b"9").unwrap_err();
        assert!(matches!(err, StoreError::ReservedKey(_)));
        assert_eq!(err.code(), "store_reserved_key");
        assert_eq!(store.meta_get("format_version").unwrap().unwrap(), b"1");
    }
}

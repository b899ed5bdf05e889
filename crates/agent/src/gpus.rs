//! [`GpuPool`]: the node's GPU devices (configured by index or UUID with `--gpus`), shared
//! out to attempts so that two running attempts never hold the same device. An attempt
//! sees the ones it holds in `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` (and no
//! other: a job asking for none gets an empty list, not every device).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Environment variable CUDA reads: the devices a process may use.
pub const ENV_CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
/// Environment variable the NVIDIA container runtime reads.
pub const ENV_NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// The node's GPU devices, and which are free.
#[derive(Debug, Default)]
pub struct GpuPool {
    /// Every device, in the configured order.
    devices: Vec<String>,
    /// Positions in `devices` not held by an attempt.
    free: Mutex<BTreeSet<usize>>,
}

impl GpuPool {
    /// A pool of `devices` (indexes such as `0`, or UUIDs such as `GPU-8f3a...`), all free.
    /// Duplicates are kept once.
    pub fn new(devices: impl IntoIterator<Item = String>) -> Arc<Self> {
        let mut unique: Vec<String> = Vec::new();
        for device in devices {
            let device = device.trim().to_string();
            if !device.is_empty() && !unique.contains(&device) {
                unique.push(device);
            }
        }
        let free = (0..unique.len()).collect();
        Arc::new(Self {
            devices: unique,
            free: Mutex::new(free),
        })
    }

    /// How many devices the node has.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the node has none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Takes `count` free devices (the first free ones in the configured order), or none
    /// at all when fewer are free. They are free again when the lease is dropped.
    pub fn take(self: &Arc<Self>, count: u32) -> Option<GpuLease> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let count = count as usize;
        if free.len() < count {
            return None;
        }
        let taken: Vec<usize> = free.iter().copied().take(count).collect();
        for position in &taken {
            free.remove(position);
        }
        Some(GpuLease {
            pool: self.clone(),
            taken,
        })
    }
}

/// Devices held by one attempt; given back on drop.
#[derive(Debug)]
pub struct GpuLease {
    pool: Arc<GpuPool>,
    taken: Vec<usize>,
}

impl GpuLease {
    /// The devices held, in the configured order.
    pub fn devices(&self) -> Vec<&str> {
        self.taken
            .iter()
            .map(|&position| self.pool.devices[position].as_str())
            .collect()
    }

    /// `CUDA_VISIBLE_DEVICES` for them: comma-separated, empty for none.
    pub fn visible_devices(&self) -> String {
        self.devices().join(",")
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.extend(self.taken.iter().copied());
    }
}

/// Parses `--gpus`: device indexes or UUIDs, comma-separated (`0,1` or
/// `GPU-8f3a...,GPU-41c2...`); empty for none.
pub fn parse_devices(text: &str) -> Result<Vec<String>, String> {
    let mut devices = Vec::new();
    for device in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = device.len() <= 128
            && device
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'));
        if !ok {
            return Err(format!(
                "`{device}` is not a GPU index or UUID (letters, digits, `-`, `_`, `:`, `.`)"
            ));
        }
        if devices.iter().any(|d| d == device) {
            return Err(format!("GPU `{device}` is named twice"));
        }
        devices.push(device.to_string());
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_attempts_holding_one_gpu_each_hold_different_ones() {
        let pool = GpuPool::new(["0".to_string(), "1".to_string()]);
        let first = pool.take(1).unwrap();
        let second = pool.take(1).unwrap();
        assert_ne!(first.visible_devices(), second.visible_devices());
        assert!(pool.take(1).is_none(), "both are held");
        drop(first);
        assert_eq!(pool.take(1).unwrap().visible_devices(), "0");
    }

    #[test]
    fn an_ask_for_more_than_is_free_takes_nothing() {
        let pool = GpuPool::new(["GPU-a".to_string(), "GPU-b".to_string()]);
        let one = pool.take(1).unwrap();
        assert!(pool.take(2).is_none());
        drop(one);
        let both = pool.take(2).unwrap();
        assert_eq!(both.visible_devices(), "GPU-a,GPU-b");
        assert_eq!(pool.take(0).unwrap().visible_devices(), "");
    }

    #[test]
    fn devices_are_indexes_or_uuids_each_named_once() {
        assert_eq!(parse_devices("0,1").unwrap(), vec!["0", "1"]);
        assert_eq!(
            parse_devices("GPU-8f3a2c1e-0d4b, GPU-41c2").unwrap(),
            vec!["GPU-8f3a2c1e-0d4b", "GPU-41c2"]
        );
        assert_eq!(parse_devices("").unwrap(), Vec::<String>::new());
        assert!(parse_devices("0,0").is_err());
        assert!(parse_devices("0;rm -rf").is_err());
        assert_eq!(GpuPool::new(["0".into(), "0".into()]).len(), 1);
    }
}

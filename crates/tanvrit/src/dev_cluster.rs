//! `tanvrit dev --replicas N`: a Raft cluster of N replicas in one process, for trying
//! failover and the cluster commands on one machine.
//!
//! Replica `k` (1-based) serves its API on `port + 2(k-1)` and replica RPC on the port
//! after it, from the `--api-addr` port (default 7070: replica-1 on 7070/7071, replica-2
//! on 7072/7073, ...), with data directory `<data-dir>/replica-k`. Timings default to the
//! LAN profile. The replicas share one admin key: `TANVRIT_BOOTSTRAP_KEY`, or one
//! generated into `<data-dir>/admin.key`. Replica RPC is mutual TLS with the dev CA in
//! `<data-dir>/tls` (`crate::dev_tls`); with `--insecure`, plain HTTP with one cluster
//! secret: `TANVRIT_CLUSTER_SECRET`, or one generated into `<data-dir>/cluster.secret`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tanvrit_client::{Client, ClientConfig};
use tanvrit_server::auth::{generate_secret, new_key_id};
use tanvrit_server::ADMIN_KEY_FILE;
use tokio::sync::watch;

use crate::config::{Config, Peer, RaftProfile, Secret};
use crate::parse::format_credits;
use crate::server::{
    ca_export, client_url, shutdown_signal, welcome_top_up, Replica, DEV_BUSINESS,
    DEV_WELCOME_CREDITS, DEV_WELCOME_KEY,
};

/// File (in the base data directory) holding the generated cluster secret.
pub const CLUSTER_SECRET_FILE: &str = "cluster.secret";

/// How long `dev` waits for the replicas to elect a leader before printing anyway.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Replica `k`'s (1-based) API and replica RPC addresses from the base API address.
pub fn replica_addrs(base: SocketAddr, k: usize) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let offset = 2 * (k - 1);
    let api = usize::from(base.port()) + offset;
    let raft = api + 1;
    let port = |p: usize| {
        u16::try_from(p).map_err(|_| anyhow::anyhow!("port {p} is out of range for replica {k}"))
    };
    Ok((
        SocketAddr::new(base.ip(), port(api)?),
        SocketAddr::new(base.ip(), port(raft)?),
    ))
}

/// The secret in `path`, or a new one written there (mode 0600) first.
fn read_or_create_secret(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let secret = text.trim();
        if !secret.is_empty() {
            return Ok(secret.to_string());
        }
    }
    let secret = make();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    Ok(secret)
}

/// Runs `tanvrit dev --replicas n` until Ctrl-C or SIGTERM.
pub async fn run(base: Config, n: usize, tls: bool) -> anyhow::Result<()> {
    let base_addr: SocketAddr = base.api_addr.parse().with_context(|| {
        format!(
            "dev --replicas needs --api-addr as ip:port, not `{}`",
            base.api_addr
        )
    })?;
    anyhow::ensure!(
        base_addr.port() != 0,
        "dev --replicas needs a fixed base port (--api-addr), not port 0"
    );
    crate::server::create_private_dir(&base.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            base.data_dir.display()
        )
    })?;
    let (admin_key, admin_source) = match base.bootstrap_key() {
        Some(key) => (key.trim().to_string(), "TANVRIT_BOOTSTRAP_KEY".to_string()),
        None => {
            let path = base.data_dir.join(ADMIN_KEY_FILE);
            let key = read_or_create_secret(&path, || generate_secret(&new_key_id()))?;
            (key, format!("from {}", path.display()))
        }
    };
    let cluster_secret = match &base.cluster_secret {
        Some(secret) => secret.0.clone(),
        None => read_or_create_secret(&base.data_dir.join(CLUSTER_SECRET_FILE), || {
            generate_secret(&new_key_id())
        })?,
    };
    let mut addrs = Vec::with_capacity(n);
    for k in 1..=n {
        addrs.push(replica_addrs(base_addr, k)?);
    }
    let peers: Vec<Peer> = addrs
        .iter()
        .enumerate()
        .map(|(i, (_, raft))| Peer {
            name: format!("replica-{}", i + 1),
            addr: raft.to_string(),
        })
        .collect();
    let (stop, stopped) = watch::channel(false);
    let mut serving = Vec::with_capacity(n);
    let mut urls = Vec::with_capacity(n);
    let mut ca_file = None;
    for (i, (api, raft)) in addrs.iter().enumerate() {
        let mut config = base.clone();
        config.data_dir = base.data_dir.join(format!("replica-{}", i + 1));
        config.api_addr = api.to_string();
        config.raft_addr = Some(raft.to_string());
        config.replica_id = format!("replica-{}", i + 1);
        config.peers = peers.clone();
        config.compute.cluster.raft = true;
        config.cluster_secret = Some(Secret(cluster_secret.clone()));
        config.bootstrap_key = Some(Secret(admin_key.clone()));
        config.raft_profile = Some(config.raft_profile.unwrap_or(RaftProfile::Lan));
        if tls {
            crate::dev_tls::apply(&mut config, &base.data_dir, i as u64 + 1)?;
        }
        let https = config.compute.tls.cert_file.is_some();
        ca_file = config.compute.tls.ca_file.clone().filter(|_| https);
        let replica = Replica::open(config)
            .await
            .with_context(|| format!("starting replica-{}", i + 1))?;
        urls.push(client_url(*api, https));
        let mut until = stopped.clone();
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        serving.push(tokio::spawn(replica.serve(shutdown, |_| async { Ok(()) })));
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });

    let leader = wait_for_leader(&urls, ca_file.as_deref(), &admin_key).await;
    println!("tanvrit dev: a {n}-replica Raft control plane in one process");
    for (i, (_, raft)) in addrs.iter().enumerate() {
        println!(
            "  replica-{}: api {}  raft {}  data {}",
            i + 1,
            urls[i],
            raft,
            base.data_dir.join(format!("replica-{}", i + 1)).display()
        );
    }
    println!("  admin key: {admin_key}  ({admin_source})");
    match &leader {
        Some(name) => {
            println!("  leader: {name}");
            match welcome_top_up(&urls[0], ca_file.as_deref(), &admin_key).await {
                Ok(balance) => println!(
                    "  business `{DEV_BUSINESS}`: {} credits available (welcome top-up of \
                     {DEV_WELCOME_CREDITS} credits, written once: idempotency key \
                     `{DEV_WELCOME_KEY}`)",
                    format_credits(balance)
                ),
                Err(e) => println!("  welcome top-up failed: {}: {}", e.code(), e.message()),
            }
        }
        None => println!(
            "  no leader elected within {LEADER_WAIT:?}; see the log (RUST_LOG=info) and \
             `tanvrit cluster topology`"
        ),
    }
    println!();
    println!(
        "  export TANVRIT_ADDR={} TANVRIT_API_KEY={admin_key} TANVRIT_BUSINESS={DEV_BUSINESS}{}",
        urls.join(","),
        ca_export(ca_file.as_deref())
    );
    println!();
    println!("listening on {}", urls[0]);

    let mut result = Ok(());
    for task in serving {
        match task.await.context("a replica task panicked") {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    }
    result
}

/// Polls the replicas until one reports a leader and the admin key works; the leader's
/// name, or `None` after [`LEADER_WAIT`].
async fn wait_for_leader(
    urls: &[String],
    ca_file: Option<&Path>,
    admin_key: &str,
) -> Option<String> {
    let client = Client::new(ClientConfig {
        endpoints: urls.to_vec(),
        api_key: Some(admin_key.to_string()),
        ca_file: ca_file.map(Path::to_path_buf),
        timeout: Duration::from_secs(2),
        max_retries: 0,
        ..ClientConfig::default()
    })
    .ok()?;
    let deadline = Instant::now() + LEADER_WAIT;
    while Instant::now() < deadline {
        // The admin key is written through the leader: once the topology answers to it
        // and names a leader, writes work.
        if let Ok(topology) = client.topology().await {
            if let Some(leader) = topology.leader {
                return Some(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_take_consecutive_port_pairs_from_the_base() {
        let base: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let (api, raft) = replica_addrs(base, 1).unwrap();
        assert_eq!((api.port(), raft.port()), (7070, 7071));
        let (api, raft) = replica_addrs(base, 3).unwrap();
        assert_eq!((api.port(), raft.port()), (7074, 7075));
        let high: SocketAddr = "127.0.0.1:65534".parse().unwrap();
        assert!(replica_addrs(high, 2).is_err());
    }

    #[test]
    fn a_generated_secret_is_kept_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLUSTER_SECRET_FILE);
        let first = read_or_create_secret(&path, || "first-secret-value".into()).unwrap();
        let again = read_or_create_secret(&path, || "second-secret-value".into()).unwrap();
        assert_eq!(
            (first.as_str(), again.as_str()),
            ("first-secret-value", "first-secret-value")
        );
    }
}

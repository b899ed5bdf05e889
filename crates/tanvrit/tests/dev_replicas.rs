//! `tanvrit dev --replicas 3` as a real process: three Raft replicas in one process on
//! consecutive ports, one admin key, writes through any of them, a clean stop.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");

/// A base port with the five ports after it free too (checked by binding them).
fn free_port_run(len: u16) -> u16 {
    let mut seed = std::process::id() as u16;
    for _ in 0..200 {
        seed = seed.wrapping_mul(31).wrapping_add(7);
        let base = 20_000 + seed % 30_000;
        let all_free =
            (0..len).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no run of {len} free ports found");
}

#[tokio::test]
async fn dev_with_three_replicas_serves_writes_on_every_address_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let base = free_port_run(6);
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("TANVRIT_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["dev", "--replicas", "3", "--data-dir"])
        .arg(data.path())
        .args(["--api-addr", &format!("127.0.0.1:{base}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = reader.next_line().await.unwrap() {
            let done = line.starts_with("listening on ");
            lines.push(line);
            if done {
                return;
            }
        }
        panic!("dev exited early: {lines:?}");
    })
    .await
    .expect("dev printed `listening on` within 60 s");
    let text = lines.join("\n");
    for k in 0..3u16 {
        // TLS by default: the API over https, replica RPC over mutual TLS.
        let api = format!("api https://127.0.0.1:{}", base + 2 * k);
        let raft = format!("raft 127.0.0.1:{}", base + 2 * k + 1);
        assert!(text.contains(&api) && text.contains(&raft), "{text}");
    }
    assert!(text.contains("leader: replica-"), "{text}");
    assert!(text.contains("1000 credits available"), "{text}");
    let export = lines
        .iter()
        .find(|l| l.trim_start().starts_with("export "))
        .expect("an export line");
    let value = |name: &str| {
        export
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let (addr, key) = (value("TANVRIT_ADDR"), value("TANVRIT_API_KEY"));
    let ca = value("TANVRIT_CA_FILE");
    assert_eq!(Path::new(&ca), data.path().join("tls/ca.pem"));
    assert_eq!(addr.split(',').count(), 3, "{addr}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("admin.key"))
            .unwrap()
            .trim(),
        key
    );
    // Each replica alone takes a write (followers forward it to the leader).
    for url in addr.split(',') {
        let output = Command::new(BIN)
            .args(["job", "submit", "--", "echo", "hi"])
            .env("TANVRIT_ADDR", url)
            .env("TANVRIT_API_KEY", &key)
            .env("TANVRIT_CA_FILE", &ca)
            .env("TANVRIT_BUSINESS", "default")
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for k in 1..=3 {
        assert!(data.path().join(format!("replica-{k}")).is_dir());
    }
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("dev stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

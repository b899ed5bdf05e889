//! TLS on real processes: the API over TLS, mutual TLS between replicas, agents and the
//! CLI checking certificates, and certificate rotation.
//!
//! - a 3-replica cluster over mutual TLS elects, replicates and fails over;
//! - a replica refuses a peer presenting an agent's or a self-signed certificate, and
//!   its log says why;
//! - with client certificates required, an agent holding a certificate of another CA
//!   cannot register (one of the cluster CA can);
//! - the CLI with the wrong CA file prints one clear line and exits 1;
//! - a certificate rotated on disk is served to new connections while a connection
//!   opened before keeps working; HTTP/2 is offered by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tanvrit_api::{CreditBalanceRequest, CreditEntryCreateRequest, EntryKind};
use tanvrit_client::config::ClientIdentity;
use tanvrit_client::{Client, ClientConfig};
use tanvrit_testkit::process::{AgentProcess, TEST_ADMIN_KEY};
use tanvrit_testkit::{eventually, ProcessCluster, ServerProcess, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const PATIENCE: Duration = Duration::from_secs(30);

fn env_of(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn top_up(key: &str) -> CreditEntryCreateRequest {
    CreditEntryCreateRequest {
        business: "acme".into(),
        kind: EntryKind::TopUp,
        amount: 1_000_000,
        idempotency_key: Some(key.into()),
        note: None,
    }
}

/// What replica `url` says business `acme` has, read from its own state.
async fn balance_at(url: &str, ca: &Path) -> Option<i64> {
    let client = Client::new(ClientConfig {
        endpoints: vec![url.to_string()],
        api_key: Some(TEST_ADMIN_KEY.into()),
        ca_file: Some(ca.to_path_buf()),
        max_retries: 0,
        timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    })
    .ok()?;
    let balance = client
        .credit_balance(CreditBalanceRequest {
            business: Some("acme".into()),
            ..Default::default()
        })
        .await
        .ok()?;
    Some(balance.available)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_replica_mtls_cluster_elects_replicates_and_fails_over() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&root.path().join("pki"), "tlstest");
    let env = [("TANVRIT_RAFT_PROFILE", "lan"), ("RUST_LOG", "off")];
    let mut cluster = ProcessCluster::start_mtls(Path::new(BIN), root.path(), 3, &env, &pki)
        .await
        .expect("replicas start");
    assert!(cluster.urls().iter().all(|u| u.starts_with("https://")));
    let leader = cluster.leader(PATIENCE).await.expect("a leader is elected");
    let admin = cluster.admin_client(20);
    let deadline = Instant::now() + PATIENCE;
    // The first leader writes the admin key in the background.
    while let Err(err) = admin.create_credit_entry(top_up("first")).await {
        assert!(Instant::now() < deadline, "cannot write: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = pki.ca_file();
    let urls = cluster.urls();
    for url in &urls {
        eventually(PATIENCE, &format!("{url} to apply the write"), || async {
            (balance_at(url, &ca).await == Some(1_000_000)).then_some(())
        })
        .await;
    }

    cluster.replica_mut(leader).kill9().await;
    let started = Instant::now();
    let next = cluster.leader(PATIENCE).await.expect("a new leader");
    assert_ne!(next, leader);
    println!("new leader after {:?}", started.elapsed());
    let deadline = Instant::now() + PATIENCE;
    while let Err(err) = admin.create_credit_entry(top_up("second")).await {
        assert!(
            Instant::now() < deadline,
            "cannot write after failover: {err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, url) in urls.iter().enumerate().filter(|(i, _)| *i != leader) {
        eventually(
            PATIENCE,
            &format!("replica {i} to apply the write after failover"),
            || async { (balance_at(url, &ca).await == Some(2_000_000)).then_some(()) },
        )
        .await;
    }
}

/// A TLS client of `addr` trusting `ca`, presenting `identity`, offering `alpn`.
async fn tls_connect(
    addr: &str,
    ca: &Path,
    identity: Option<&ClientIdentity>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = tanvrit_tls::client_config(ca, identity).expect("client TLS config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// Sends one HTTP/1.1 request on `stream`; true when the answer is a 200.
async fn get_ok<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> bool {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

fn identity(files: &tanvrit_testkit::tls::CertFiles) -> ClientIdentity {
    ClientIdentity {
        cert_file: files.cert.clone(),
        key_file: files.key.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_agent_and_self_signed_certificates_and_logs_why() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&root.path().join("pki"), "tlstest");
    let raft_port = ProcessCluster::free_port().unwrap();
    let raft_addr = format!("127.0.0.1:{raft_port}");
    let peers = format!("replica-1={raft_addr}");
    let mut env = pki.replica_env(1);
    env.extend([
        ("TANVRIT_CLUSTER_RAFT".to_string(), "true".to_string()),
        ("TANVRIT_PEERS".to_string(), peers),
        ("TANVRIT_REPLICA_ID".to_string(), "replica-1".to_string()),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ]);
    let log = root.path().join("replica-1.log");
    let data = root.path().join("replica-1");
    std::fs::create_dir_all(&data).unwrap();
    let server =
        ServerProcess::start_logged(Path::new(BIN), "server", &data, &env_of(&env), Some(&log))
            .await
            .expect("the replica starts");
    let ca = pki.ca_file();
    let log_says = |needle: String| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&needle)) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    // The warning about plain replica RPC must not be there: this one is mutual TLS.
    let own = pki.replica(1);
    let mut member = tls_connect(&raft_addr, &ca, Some(&identity(&own)), &[])
        .await
        .expect("a member replica's certificate is admitted");
    let answered = {
        let request = "POST /raft/v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        member.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = member.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(answered.starts_with("HTTP/1.1 "), "{answered}");
    assert!(
        !answered.contains("cluster_secret_invalid"),
        "no secret is asked over mutual TLS: {answered}"
    );

    for (who, files, why) in [
        (
            "an agent",
            pki.agent("n1"),
            "agent-n1.tlstest.tanvrit".to_string(),
        ),
        (
            "a self-signed replica",
            pki.self_signed_replica(2),
            "UnknownIssuer".to_string(),
        ),
    ] {
        // TLS 1.3 finishes the client's side of the handshake before the server has
        // judged its certificate: the refusal shows on the first exchange.
        let refused = match tls_connect(&raft_addr, &ca, Some(&identity(&files)), &[]).await {
            Err(_) => true,
            Ok(mut stream) => !get_ok(&mut stream, "/raft/v1/status").await,
        };
        assert!(refused, "{who}'s certificate was admitted");
        assert!(
            log_says(why.clone()).await,
            "the replica's log does not say why it refused {who} ({why}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    assert!(log_says("refused a replica RPC connection".into()).await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("NOT ENCRYPTED"), "{text}");
    drop(server);
}

/// A single-node server over TLS with `extra` settings.
async fn tls_server(
    root: &Path,
    pki: &TestPki,
    extra: &[(&str, &str)],
) -> (ServerProcess, Vec<(String, String)>) {
    let mut env = pki.replica_env(1);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let data = root.join("server");
    std::fs::create_dir_all(&data).unwrap();
    let server = ServerProcess::start(Path::new(BIN), &data, &env_of(&env))
        .await
        .expect("the server starts");
    assert!(server.url().starts_with("https://"), "{}", server.url());
    (server, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_certificate_of_another_ca_cannot_register() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&root.path().join("pki"), "tlstest");
    let ca = pki.ca_file().to_string_lossy().into_owned();
    let (server, _) = tls_server(
        root.path(),
        &pki,
        &[
            ("TANVRIT_TLS_CLIENT_CA_FILE", &ca),
            ("TANVRIT_TLS_CLIENT_AUTH", "required"),
        ],
    )
    .await;
    let operator = pki.issue(
        &tanvrit_tls::issue::LeafRole::Client {
            name: "ops".into(),
            business: None,
        },
        "client-ops",
    );
    // Every client must present a certificate now, operators too.
    let admin = Client::new(ClientConfig {
        endpoints: vec![server.url().to_string()],
        api_key: Some(TEST_ADMIN_KEY.into()),
        ca_file: Some(pki.ca_file()),
        identity: Some(identity(&operator)),
        ..ClientConfig::default()
    })
    .unwrap();
    let key = admin
        .create_key(tanvrit_api::KeyCreateRequest {
            name: None,
            scope: tanvrit_api::Scope::Agent,
            business: None,
            node: None,
        })
        .await
        .expect("an operator with a certificate of the CA is served")
        .secret;
    // The same operator without its certificate is refused at the handshake.
    let bare = Client::new(ClientConfig {
        endpoints: vec![server.url().to_string()],
        api_key: Some(TEST_ADMIN_KEY.into()),
        ca_file: Some(pki.ca_file()),
        max_retries: 0,
        ..ClientConfig::default()
    })
    .unwrap();
    let err = bare.topology().await.unwrap_err();
    assert_eq!(err.code(), "tls", "{err}");

    let start_agent = |files: tanvrit_testkit::tls::CertFiles, dir: PathBuf| {
        let (url, key, ca) = (server.url().to_string(), key.clone(), ca.clone());
        async move {
            let (cert, cert_key) = (
                files.cert.to_string_lossy().into_owned(),
                files.key.to_string_lossy().into_owned(),
            );
            let args = [
                "--ca-file",
                ca.as_str(),
                "--client-cert",
                cert.as_str(),
                "--client-key",
                cert_key.as_str(),
                "--node-id",
                "n1",
                "--isolation",
                "none",
            ];
            AgentProcess::start(Path::new(BIN), &url, &key, &dir, &args).await
        }
    };
    let other = TestPki::new(&root.path().join("other-pki"), "tlstest");
    let stranger = start_agent(other.agent("n1"), root.path().join("stranger")).await;
    assert!(
        stranger.is_err(),
        "an agent with another CA's certificate registered"
    );
    let nodes = admin.list_nodes(Default::default()).await.unwrap();
    assert!(nodes.nodes.is_empty(), "{nodes:?}");
    let known = start_agent(pki.agent("n1"), root.path().join("known"))
        .await
        .expect("an agent with the cluster CA's certificate registers");
    assert_eq!(known.node_id(), "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_with_the_wrong_ca_file_prints_one_clear_line() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&root.path().join("pki"), "tlstest");
    let (server, _) = tls_server(root.path(), &pki, &[]).await;
    let other = TestPki::new(&root.path().join("other-pki"), "tlstest");
    let run = |ca: PathBuf| {
        let url = server.url().to_string();
        async move {
            tokio::process::Command::new(BIN)
                .args([
                    "--addr",
                    &url,
                    "--api-key",
                    TEST_ADMIN_KEY,
                    "cluster",
                    "topology",
                ])
                .arg("--ca-file")
                .arg(ca)
                .env_remove("TANVRIT_CA_FILE")
                .env("RUST_LOG", "off")
                .output()
                .await
                .unwrap()
        }
    };
    let wrong = run(other.ca_file()).await;
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: tls: "), "{stderr}");
    assert!(stderr.contains("not signed by the CA"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let right = run(pki.ca_file()).await;
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_while_old_ones_carry_on() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&root.path().join("pki"), "tlstest");
    let (server, _) = tls_server(root.path(), &pki, &[]).await;
    let addr = server.url().trim_start_matches("https://").to_string();
    let ca = pki.ca_file();
    let served = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        let (_, session) = stream.get_ref();
        tanvrit_tls::pem::fingerprint(&session.peer_certificates().unwrap()[0])
    };
    let mut old = tls_connect(&addr, &ca, None, &[b"http/1.1"]).await.unwrap();
    assert!(get_ok(&mut old, "/healthz").await);
    let before = served(&old);
    let h2 = tls_connect(&addr, &ca, None, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        h2.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "HTTP/2 is offered"
    );

    pki.replica(1);
    eventually(
        Duration::from_secs(15),
        "new connections to get the rotated certificate",
        || async {
            let fresh = tls_connect(&addr, &ca, None, &[b"http/1.1"]).await.ok()?;
            (served(&fresh) != before).then_some(())
        },
    )
    .await;
    assert!(
        get_ok(&mut old, "/healthz").await,
        "the connection opened before the rotation was dropped"
    );
    assert_eq!(served(&old), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_alone_acts_as_the_identity_it_names() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&root.path().join("pki"), "tlstest");
    let ca = pki.ca_file().to_string_lossy().into_owned();
    let (server, _) = tls_server(root.path(), &pki, &[("TANVRIT_TLS_CLIENT_CA_FILE", &ca)]).await;
    let client = |files: &tanvrit_testkit::tls::CertFiles| {
        Client::new(ClientConfig {
            endpoints: vec![server.url().to_string()],
            api_key: None,
            ca_file: Some(pki.ca_file()),
            identity: Some(identity(files)),
            max_retries: 0,
            ..ClientConfig::default()
        })
        .unwrap()
    };
    let role = |name: &str, business: Option<&str>| tanvrit_tls::issue::LeafRole::Client {
        name: name.into(),
        business: business.map(str::to_string),
    };
    let key_request = || tanvrit_api::KeyCreateRequest {
        name: None,
        scope: tanvrit_api::Scope::Agent,
        business: None,
        node: None,
    };
    // `client-ops...` without a business: an admin, with no API key at all.
    let ops = client(&pki.issue(&role("ops", None), "client-ops"));
    ops.create_key(key_request())
        .await
        .expect("an operator's certificate acts as admin");
    // A user of business acme: its own balance, but no admin call.
    let app = client(&pki.issue(&role("app", Some("acme")), "client-app"));
    app.credit_balance(CreditBalanceRequest::default())
        .await
        .expect("a business certificate reads its own balance");
    assert_eq!(
        app.create_key(key_request()).await.unwrap_err().status(),
        Some(403)
    );
    // An agent's certificate names no API identity: without a key, 401.
    let agent = client(&pki.agent("n1"));
    assert_eq!(agent.topology().await.unwrap_err().status(), Some(401));
    // Without any certificate and key: 401 too (certificates are optional here).
    let bare = Client::new(ClientConfig {
        endpoints: vec![server.url().to_string()],
        ca_file: Some(pki.ca_file()),
        max_retries: 0,
        ..ClientConfig::default()
    })
    .unwrap();
    assert_eq!(bare.topology().await.unwrap_err().status(), Some(401));
}

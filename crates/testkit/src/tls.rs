//! [`TestPki`]: a throwaway cluster CA and the certificates tests hand to replicas,
//! agents and clients, written as PEM files into a temporary directory.

use std::path::{Path, PathBuf};

use tanvrit_tls::issue::{self, Issued, LeafRole};

/// A certificate file and its key file.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// A CA for `cluster` in `dir`, and the certificates made from it.
pub struct TestPki {
    dir: PathBuf,
    cluster: String,
    ca: Issued,
}

impl TestPki {
    /// A new CA for `cluster`, written to `dir/ca.pem`.
    pub fn new(dir: &Path, cluster: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("the PKI directory can be made");
        let ca = issue::create_ca(cluster, 30).expect("a CA can be made");
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).expect("ca.pem can be written");
        TestPki {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
            ca,
        }
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The cluster id the names carry.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A certificate for `role` (with `localhost` and `127.0.0.1` as extra names),
    /// written as `<stem>.pem` and `<stem>-key.pem`; a second call for the same stem
    /// overwrites both (a rotation).
    pub fn issue(&self, role: &LeafRole, stem: &str) -> CertFiles {
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let issued = issue::create_cert(
            &self.ca.cert_pem,
            &self.ca.key_pem,
            &self.cluster,
            role,
            &names,
            10,
        )
        .expect("a certificate can be made");
        let files = CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        // The key first: a reader between the two writes sees a mismatched pair and
        // keeps the previous one.
        std::fs::write(&files.key, &issued.key_pem).expect("the key can be written");
        std::fs::write(&files.cert, &issued.cert_pem).expect("the certificate can be written");
        files
    }

    /// Replica `id`'s certificate (`replica-<id>.pem`).
    pub fn replica(&self, id: u64) -> CertFiles {
        self.issue(&LeafRole::Replica(id), &format!("replica-{id}"))
    }

    /// Agent `node`'s certificate (`agent-<node>.pem`).
    pub fn agent(&self, node: &str) -> CertFiles {
        self.issue(&LeafRole::Agent(node.into()), &format!("agent-{node}"))
    }

    /// A self-signed certificate naming replica `id` of this cluster: right name, no CA.
    pub fn self_signed_replica(&self, id: u64) -> CertFiles {
        let other = TestPki::new(&self.dir.join(format!("self-signed-{id}")), &self.cluster);
        other.replica(id)
    }

    /// The environment that makes `tanvrit server` replica `id` serve its API over TLS
    /// and speak mutual TLS to its peers.
    pub fn replica_env(&self, id: u64) -> Vec<(String, String)> {
        let files = self.replica(id);
        vec![
            ("TANVRIT_TLS_CERT_FILE".into(), path(&files.cert)),
            ("TANVRIT_TLS_KEY_FILE".into(), path(&files.key)),
            ("TANVRIT_TLS_CA_FILE".into(), path(&self.ca_file())),
            ("TANVRIT_CLUSTER_ID".into(), self.cluster.clone()),
        ]
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

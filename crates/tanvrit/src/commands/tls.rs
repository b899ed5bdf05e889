//! `tanvrit tls ca create` and `tanvrit tls cert create`: the cluster CA and the
//! certificates of replicas, agents and API clients (rcgen, ECDSA P-256), with their
//! SHA-256 fingerprints and the configuration lines that use them.
//!
//! Keys are written readable by their owner only, and nothing is overwritten: a second
//! CA by mistake would silently split a cluster's trust.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use tanvrit_tls::issue::{self, Issued, LeafRole};

/// Certificate commands (no server is contacted).
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The cluster's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificates signed by the cluster CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `tanvrit tls ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a CA: `<dir>/ca.pem` (give it to every replica, agent and client) and
    /// `<dir>/ca-key.pem` (keep it offline: it signs certificates).
    Create(CaCreateArgs),
}

/// `tanvrit tls cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a certificate signed by the CA, named for what it is for:
    /// `replica-<id>.<cluster>.tanvrit`, `agent-<node>.<cluster>.tanvrit` or
    /// `client-<name>.<cluster>.tanvrit`.
    Create(CertCreateArgs),
}

/// Flags of `tanvrit tls ca create`.
#[derive(Debug, Args)]
pub struct CaCreateArgs {
    /// Where to write `ca.pem` and `ca-key.pem`.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// The cluster the CA is for (certificates name it).
    #[arg(long, env = "TANVRIT_CLUSTER_ID", default_value = "local")]
    pub cluster_id: String,
    /// Days the CA is valid.
    #[arg(long, default_value_t = issue::CA_DAYS)]
    pub days: u32,
}

/// Flags of `tanvrit tls cert create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("role").required(true).args(["replica", "agent", "client"])))]
pub struct CertCreateArgs {
    /// A replica's certificate, by Raft id: for its API and replica RPC (also names
    /// `localhost` and `127.0.0.1`).
    #[arg(long, value_name = "ID")]
    pub replica: Option<u64>,
    /// An agent's certificate, by node id.
    #[arg(long, value_name = "NODE")]
    pub agent: Option<String>,
    /// An API client's certificate: an admin, or a user of `--business`.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// The business a client certificate acts for (without it: admin).
    #[arg(long, requires = "client")]
    pub business: Option<String>,
    /// More names the certificate is valid for (host names or IP addresses clients
    /// dial the holder by), repeatable.
    #[arg(long = "name", value_name = "HOST")]
    pub names: Vec<String>,
    /// Where to write the certificate and its key.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// The CA certificate [default: <dir>/ca.pem].
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// The CA key [default: <dir>/ca-key.pem].
    #[arg(long, value_name = "PATH")]
    pub ca_key: Option<PathBuf>,
    /// The cluster the CA was made for.
    #[arg(long, env = "TANVRIT_CLUSTER_ID", default_value = "local")]
    pub cluster_id: String,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = issue::CERT_DAYS)]
    pub days: u32,
}

impl TlsCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            TlsCommand::Ca(CaCommand::Create(args)) => {
                let paths = create_ca(&args.dir, &args.cluster_id, args.days)?;
                print_issued("CA", &paths);
                let ca = absolute(&paths.cert);
                println!();
                println!("Give {} to every replica, agent and client:", ca.display());
                println!("  export TANVRIT_CA_FILE={}", ca.display());
                println!(
                    "Keep {} secret (offline when you can).",
                    paths.key.display()
                );
                Ok(())
            }
            TlsCommand::Cert(CertCommand::Create(args)) => run_cert_create(args),
        }
    }
}

/// A certificate and key written to disk, with what was printed about them.
pub struct Written {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// What was made.
    pub issued: Issued,
}

/// Makes a CA for `cluster` in `dir` (`ca.pem`, `ca-key.pem`).
pub fn create_ca(dir: &Path, cluster: &str, days: u32) -> anyhow::Result<Written> {
    let issued = issue::create_ca(cluster, days)?;
    write_pair(dir, "ca", issued)
}

/// Makes a certificate for `role`, signed by the CA files, into `dir`.
pub fn create_cert(
    dir: &Path,
    ca: &Path,
    ca_key: &Path,
    cluster: &str,
    role: &LeafRole,
    names: &[String],
    days: u32,
) -> anyhow::Result<Written> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let ca_pem = read(ca)?;
    let ca_key_pem = read(ca_key)?;
    let mut names = names.to_vec();
    if matches!(role, LeafRole::Replica(_)) {
        for local in ["localhost", "127.0.0.1"] {
            if !names.iter().any(|n| n == local) {
                names.push(local.to_string());
            }
        }
    }
    let issued = issue::create_cert(&ca_pem, &ca_key_pem, cluster, role, &names, days)?;
    let stem = match role {
        LeafRole::Replica(id) => format!("replica-{id}"),
        LeafRole::Agent(node) => format!("agent-{node}"),
        LeafRole::Client { name, .. } => format!("client-{name}"),
    };
    write_pair(dir, &stem, issued)
}

fn run_cert_create(args: CertCreateArgs) -> anyhow::Result<()> {
    let role = match (args.replica, args.agent, args.client) {
        (Some(id), _, _) => LeafRole::Replica(id),
        (_, Some(node), _) => LeafRole::Agent(node),
        (_, _, Some(name)) => LeafRole::Client {
            name,
            business: args.business,
        },
        // clap's group requires one of the three.
        _ => anyhow::bail!("give --replica, --agent or --client"),
    };
    let ca = args.ca.unwrap_or_else(|| args.dir.join("ca.pem"));
    let ca_key = args.ca_key.unwrap_or_else(|| args.dir.join("ca-key.pem"));
    let written = create_cert(
        &args.dir,
        &ca,
        &ca_key,
        &args.cluster_id,
        &role,
        &args.names,
        args.days,
    )?;
    print_issued("certificate", &written);
    let (cert, key, ca) = (
        absolute(&written.cert),
        absolute(&written.key),
        absolute(&ca),
    );
    println!();
    match role {
        LeafRole::Replica(_) => {
            println!("Replica configuration (TOML), the API and replica RPC over TLS:");
            println!("  [compute.tls]");
            println!("  cert_file = \"{}\"", cert.display());
            println!("  key_file = \"{}\"", key.display());
            println!("  ca_file = \"{}\"", ca.display());
            println!("or the environment:");
            println!(
                "  export TANVRIT_TLS_CERT_FILE={} TANVRIT_TLS_KEY_FILE={} TANVRIT_TLS_CA_FILE={}",
                cert.display(),
                key.display(),
                ca.display()
            );
        }
        LeafRole::Agent(_) | LeafRole::Client { .. } => {
            println!("Client environment (tanvrit agent, the CLI, the SDK):");
            println!(
                "  export TANVRIT_CA_FILE={} TANVRIT_CLIENT_CERT_FILE={} TANVRIT_CLIENT_KEY_FILE={}",
                ca.display(),
                cert.display(),
                key.display()
            );
            if matches!(role, LeafRole::Client { .. }) {
                println!(
                    "Replicas accept it with compute.tls.client_ca_file = \"{}\"",
                    ca.display()
                );
            }
        }
    }
    Ok(())
}

fn print_issued(what: &str, written: &Written) {
    println!("Wrote {what} {}", written.cert.display());
    println!("  key:      {}", written.key.display());
    if !written.issued.names.is_empty() {
        println!("  names:    {}", written.issued.names.join(", "));
    }
    println!("  SHA-256:  {}", written.issued.fingerprint);
    println!(
        "  expires:  {}",
        written
            .issued
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes `<stem>.pem` and `<stem>-key.pem` (0600) into `dir`, refusing to overwrite.
fn write_pair(dir: &Path, stem: &str, issued: Issued) -> anyhow::Result<Written> {
    crate::server::create_private_dir(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    for path in [&cert, &key] {
        if path.exists() {
            anyhow::bail!(
                "{} exists; remove it first (or use another --dir)",
                path.display()
            );
        }
    }
    write_new(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_new(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    Ok(Written { cert, key, issued })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_and_its_certificates_are_written_once_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(dir.path(), "prod", 30).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.key), 0o600);
        let replica = create_cert(
            dir.path(),
            &ca.cert,
            &ca.key,
            "prod",
            &LeafRole::Replica(1),
            &[],
            10,
        )
        .unwrap();
        assert_eq!(
            replica.issued.names,
            vec!["replica-1.prod.tanvrit", "localhost", "127.0.0.1"]
        );
        assert!(replica.cert.ends_with("replica-1.pem"));
        assert_eq!(mode(&replica.key), 0o600);
        let again = create_ca(dir.path(), "prod", 30).err().unwrap();
        assert!(again.to_string().contains("exists"), "{again}");
    }
}

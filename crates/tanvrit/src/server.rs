//! `tanvrit server` and `tanvrit dev`: one replica serving the API.
//!
//! Both load the configuration, bind `api_addr`, open `SingleNode` (or, in Raft mode,
//! `RaftCluster`: see [`crate::raft`]), make sure an admin key exists and serve until
//! Ctrl-C or SIGTERM. `dev` also prints the admin key with a ready-to-paste `export`
//! line, gives business `default` its welcome credits and runs a local agent (the same
//! agent code, in-process) so submitted jobs run; `dev --replicas N` runs a Raft
//! cluster of N replicas in one process ([`crate::dev_cluster`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tanvrit_agent::{Agent, AgentConfig};
use tanvrit_api::{BusinessId, CreditEntryCreateRequest, EntryKind};
use tanvrit_client::{Client, ClientConfig};
use tanvrit_cluster::{ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_server::{BootstrapOutcome, ServerConfig, ADMIN_KEY_FILE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::agent::{agent_client, dev_agent_key, DEV_AGENT_DIR, DEV_AGENT_KEY_FILE};
use crate::config::{Config, ConfigFlags};
use crate::parse::{format_credits, MICROS_PER_CREDIT};

/// The business `dev` tops up, and `job submit` bills when no `--business` is given.
pub const DEV_BUSINESS: &str = "default";
/// Idempotency key of the welcome top-up: one entry however often `dev` starts.
pub const DEV_WELCOME_KEY: &str = "dev-welcome";
/// Credits in the welcome top-up.
pub const DEV_WELCOME_CREDITS: i64 = 1_000;

/// `tanvrit server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
}

/// `tanvrit dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Run a Raft cluster of this many replicas in one process, on consecutive ports
    /// from `--api-addr` (API and replica RPC alternate) with data directories
    /// `<data-dir>/replica-N`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub replicas: u16,
    /// Plain HTTP (and the shared secret between replicas) instead of TLS with a
    /// throwaway CA in `<data-dir>/tls` (for local curl without `--cacert`).
    #[arg(long, env = "TANVRIT_DEV_INSECURE")]
    pub insecure: bool,
}

/// A replica that is open and bound, not yet serving.
pub(crate) struct Replica {
    config: Config,
    cluster: Arc<dyn ClusterService>,
    listener: TcpListener,
    addr: SocketAddr,
    /// What the admin bootstrap did; `None` in Raft mode, where it runs in the
    /// background (`admin_task`) once a leader is elected.
    bootstrap: Option<BootstrapOutcome>,
    admin_task: Option<JoinHandle<()>>,
}

impl Replica {
    /// Binds the API address, opens the store, and ensures an admin key. Binding first
    /// means a taken port fails before anything is written, and the topology shows the
    /// real address when port 0 was asked for.
    pub(crate) async fn open(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.api_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.api_addr))?;
        let addr = listener.local_addr()?;
        create_private_dir(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        if config.raft() {
            let raft: Arc<dyn ClusterService> = crate::raft::open(&config, addr).await?;
            let admin_task = tokio::spawn(crate::raft::bootstrap_admin_when_led(
                raft.clone(),
                config.data_dir.clone(),
                config.bootstrap_key().map(str::to_string),
            ));
            return Ok(Self {
                config,
                cluster: raft,
                listener,
                addr,
                bootstrap: None,
                admin_task: Some(admin_task),
            });
        }
        let cluster_config = SingleNodeConfig {
            data_dir: config.data_dir.clone(),
            replica_name: config.replica_id.clone(),
            region: config.replica_region.clone(),
            cluster_id: config.cluster_id.clone(),
            address: addr.to_string(),
            snapshot_every: config.snapshot_every,
            min_index_wait: config.min_index_wait,
            log_retention_bytes_per_job: config.log_retention_bytes_per_job,
            disk_faults: None,
        };
        // Opening replays the log: blocking work, kept off the async workers.
        let cluster = tokio::task::spawn_blocking(move || SingleNode::open(cluster_config))
            .await
            .context("opening the store panicked")??;
        let bootstrap = tanvrit_server::ensure_bootstrap_admin(
            &*cluster,
            &config.data_dir,
            config.bootstrap_key(),
        )
        .await?;
        crate::raft::log_outcome(&bootstrap);
        Ok(Self {
            config,
            cluster,
            listener,
            addr,
            bootstrap: Some(bootstrap),
            admin_task: None,
        })
    }

    /// Serves until `shutdown` resolves, then closes the cluster. `on_ready` runs once
    /// the API is accepting requests.
    pub(crate) async fn serve<R>(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_ready: impl FnOnce(ReadyInfo) -> R,
    ) -> anyhow::Result<()>
    where
        R: Future<Output = anyhow::Result<()>>,
    {
        let server_config = ServerConfig {
            body_limit_bytes: self.config.body_limit_bytes,
            rates: self.config.rates(),
            min_index_wait: self.config.min_index_wait,
            long_poll_max: self.config.long_poll_max,
            retry_after: self.config.retry_after,
            node_ttl: self.config.node_ttl,
            node_lost_after: self.config.node_lost_after,
            scheduler_strategy: self.config.scheduler_strategy,
            cron_skip_grace: self.config.cron_skip_grace,
            schedules_paused: self.config.schedules_paused,
            idempotency_window: self.config.idempotency_window,
            job_retention: self.config.compute.retention.jobs,
            rate_limits: self.config.compute.limits.rate_limits(),
            max_streams_per_key: self.config.compute.limits.streams_per_key,
            header_read_timeout: self.config.compute.limits.header_read_timeout,
            body_read_timeout: self.config.compute.limits.body_read_timeout,
            header_limit_bytes: self.config.compute.limits.header_bytes,
            cluster_secret: self
                .config
                .cluster_secret
                .as_ref()
                .filter(|_| self.config.raft())
                .map(|s| tanvrit_server::ClusterSecret(s.0.clone())),
            ..ServerConfig::default()
        };
        let tls = self.tls()?;
        let server_config = ServerConfig {
            client_cert_cluster: self
                .config
                .compute
                .tls
                .client_ca_file
                .as_ref()
                .map(|_| self.config.cluster_id.clone()),
            ..server_config
        };
        // New connections get a rotated certificate: at once on SIGHUP, else within a
        // few seconds of the files changing.
        let reloading = tls.as_ref().map(|tls| reload_on_change(&tls.cert));
        let cluster = self.cluster.clone();
        // A replica whose Raft core died answers nothing current: stop serving and exit
        // non-zero, so the supervisor restarts it from its disk.
        let failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let shutdown = {
            let cluster = self.cluster.clone();
            let failure = failure.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    reason = cluster.failed() => {
                        tracing::error!(%reason, "the replica failed; exiting");
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                    }
                }
            }
        };
        let https = tls.is_some();
        let serving = tokio::spawn(tanvrit_server::serve_tls(
            server_config,
            cluster,
            self.listener,
            tls,
            shutdown,
        ));
        let info = ReadyInfo {
            url: client_url(self.addr, https),
            ca_file: self.config.compute.tls.ca_file.clone().filter(|_| https),
            data_dir: self.config.data_dir.clone(),
            bootstrap_key: self.config.bootstrap_key().map(str::to_string),
            bootstrap: self.bootstrap,
        };
        let ready = on_ready(info).await;
        let served = serving.await.context("the API task panicked")?;
        for task in reloading.into_iter().flatten() {
            task.abort();
        }
        if let Some(task) = &self.admin_task {
            task.abort();
        }
        self.cluster.shutdown().await;
        let failed = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reason) = failed {
            anyhow::bail!("{reason}");
        }
        ready?;
        served?;
        Ok(())
    }
}

impl Replica {
    /// The API's TLS, when `compute.tls` names a certificate.
    fn tls(&self) -> anyhow::Result<Option<tanvrit_tls::ServerTls>> {
        let Some(config) = self
            .config
            .compute
            .tls
            .api()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        else {
            return Ok(None);
        };
        let tls = tanvrit_tls::ServerTls::api(&config)
            .with_context(|| "cannot set up TLS for the API (compute.tls)")?;
        tracing::info!(
            cert_file = %config.cert_file.display(),
            sha256 = %tls.cert.fingerprint(),
            client_certificates = match (&config.client_ca_file, config.client_auth) {
                (None, _) => "no",
                (Some(_), tanvrit_tls::ClientAuth::Optional) => "optional",
                (Some(_), tanvrit_tls::ClientAuth::Required) => "required",
            },
            "the API is served over TLS (HTTP/2 and HTTP/1.1)"
        );
        Ok(Some(tls))
    }
}

/// How often the certificate files are checked for a change.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads `cert` when its files change and on SIGHUP; the tasks run until aborted.
pub(crate) fn reload_on_change(
    cert: &std::sync::Arc<tanvrit_tls::ReloadingCert>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![cert.watch(CERT_CHECK_INTERVAL)];
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangups) => {
                let cert = cert.clone();
                tasks.push(tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        if let Err(error) = cert.reload() {
                            tracing::error!(
                                code = error.code(),
                                %error,
                                "SIGHUP: the TLS certificate cannot be reloaded; still serving \
                                 the previous one"
                            );
                        }
                    }
                }));
            }
            Err(error) => {
                tracing::warn!(%error, "no SIGHUP handler: certificates reload on file change only")
            }
        }
    }
    tasks
}

/// What a started replica tells its caller.
pub(crate) struct ReadyInfo {
    /// The URL clients use (a wildcard bind address becomes loopback).
    url: String,
    /// The CA the API's certificate chains to, for this process's own clients (`dev`).
    ca_file: Option<PathBuf>,
    data_dir: PathBuf,
    bootstrap_key: Option<String>,
    bootstrap: Option<BootstrapOutcome>,
}

/// Runs `tanvrit server`.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let replica = Replica::open(config).await?;
    replica
        .serve(shutdown_signal(), |info| async move {
            // Tests and scripts wait for this exact line.
            println!("listening on {}", info.url);
            Ok(())
        })
        .await
}

/// Runs `tanvrit dev`: the replica, and a local agent against it. On Ctrl-C or SIGTERM
/// the agent stops first (its running jobs are stopped and reported while the API still
/// answers), then the server.
pub async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if args.replicas > 1 {
        return crate::dev_cluster::run(config, usize::from(args.replicas), !args.insecure).await;
    }
    if !args.insecure {
        create_private_dir(&config.data_dir)?;
        let base = config.data_dir.clone();
        crate::dev_tls::apply(&mut config, &base, 1)?;
    }
    let replica = Replica::open(config).await?;
    let (stop_server, server_stop) = tokio::sync::oneshot::channel::<()>();
    replica
        .serve(
            async move {
                let _ = server_stop.await;
            },
            |info| async move {
                let agent = dev_ready(info).await;
                shutdown_signal().await;
                if let Some(agent) = agent {
                    agent.stop().await;
                }
                let _ = stop_server.send(());
                Ok(())
            },
        )
        .await
}

/// The agent `dev` runs in-process.
struct LocalAgent {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tanvrit_agent::AgentError>>,
    /// `cgroup v1`, `cgroup v2` or `none`.
    isolation: String,
}

impl LocalAgent {
    /// Starts the local agent in `<data_dir>/agent` with an agent key of its own.
    async fn start(info: &ReadyInfo, admin_secret: Option<&str>) -> Result<Self, String> {
        let key = match admin_secret {
            Some(secret) => {
                let admin = Client::new(ClientConfig {
                    endpoints: vec![info.url.clone()],
                    api_key: Some(secret.to_string()),
                    ca_file: info.ca_file.clone(),
                    ..ClientConfig::default()
                })
                .map_err(|e| e.to_string())?;
                dev_agent_key(&admin, &info.data_dir)
                    .await
                    .map_err(|e| format!("cannot create its key: {}: {}", e.code(), e.message()))?
            }
            None => read_secret(&info.data_dir.join(DEV_AGENT_KEY_FILE)).ok_or(
                "the admin key is not known, so no agent key can be made; set \
                 TANVRIT_BOOTSTRAP_KEY again"
                    .to_string(),
            )?,
        };
        let client = agent_client(
            vec![info.url.clone()],
            key,
            Duration::from_secs(30),
            Duration::from_secs(5),
            crate::agent::AgentTls {
                ca_file: info.ca_file.clone(),
                identity: None,
            },
        )
        .map_err(|e| e.to_string())?;
        // The replica's files (every business's jobs, the keys) are not the jobs' to read:
        // the local agent runs them on this machine.
        tanvrit_agent::isolation::secure_data_dir(&info.data_dir).map_err(|e| e.to_string())?;
        let config = AgentConfig::new(info.data_dir.join(DEV_AGENT_DIR));
        let agent = match Agent::new(client.clone(), config.clone()) {
            Err(e @ tanvrit_agent::AgentError::Isolation(_)) => {
                // Development may do without (a non-root developer): say so loudly.
                tracing::warn!(error = %e, "the local agent runs jobs WITHOUT isolation");
                println!("  WARNING: jobs run without isolation (as this user, no limits): {e}");
                let mut config = config;
                config.isolation.mode = tanvrit_agent::IsolationMode::None;
                Agent::new(client, config)
            }
            other => other,
        }
        .map_err(|e| e.to_string())?;
        let isolation = agent.isolation().describe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(
            async move {
                let _ = stopped.await;
            },
            |node| tracing::info!(node = %node.id, "the local agent registered"),
        ));
        Ok(Self {
            stop,
            task,
            isolation,
        })
    }

    /// Stops the agent (and its jobs) and waits for it.
    async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(code = e.code(), error = %e, "the local agent failed"),
            Err(e) => tracing::error!(error = %e, "the local agent panicked"),
        }
    }
}

/// Prints what a developer needs, after the welcome top-up went through the API, and
/// starts the local agent.
async fn dev_ready(info: ReadyInfo) -> Option<LocalAgent> {
    let Some((secret, source)) = admin_secret(&info) else {
        println!(
            "The admin key was created in an earlier run from TANVRIT_BOOTSTRAP_KEY and is \
             not known now; set TANVRIT_BOOTSTRAP_KEY again to print it."
        );
        let agent = local_agent(&info, None).await;
        println!("listening on {}", info.url);
        return agent;
    };
    let credits = welcome_top_up(&info.url, info.ca_file.as_deref(), &secret).await;
    println!("tanvrit dev: a single-node control plane");
    println!("  data dir:  {}", info.data_dir.display());
    println!("  admin key: {secret}  ({source})");
    match credits {
        Ok(balance) => println!(
            "  business `{DEV_BUSINESS}`: {} credits available (welcome top-up of \
             {DEV_WELCOME_CREDITS} credits, written once: idempotency key `{DEV_WELCOME_KEY}`)",
            format_credits(balance)
        ),
        Err(e) => println!("  welcome top-up failed: {}: {}", e.code(), e.message()),
    }
    let agent = local_agent(&info, Some(&secret)).await;
    println!();
    println!(
        "  export TANVRIT_ADDR={} TANVRIT_API_KEY={secret} TANVRIT_BUSINESS={DEV_BUSINESS}{}",
        info.url,
        ca_export(info.ca_file.as_deref())
    );
    println!();
    println!("listening on {}", info.url);
    agent
}

/// Starts the local agent and prints one line about it.
async fn local_agent(info: &ReadyInfo, admin_secret: Option<&str>) -> Option<LocalAgent> {
    match LocalAgent::start(info, admin_secret).await {
        Ok(agent) => {
            let config = AgentConfig::new(info.data_dir.join(DEV_AGENT_DIR));
            println!(
                "  local agent: {} millicores, {} MB, in {} (jobs run on this machine; \
                 isolation: {})",
                config.resources.cpu_millis,
                config.resources.memory_mb,
                config.data_dir.display(),
                agent.isolation
            );
            Some(agent)
        }
        Err(e) => {
            println!("  no local agent: {e}; jobs stay pending until an agent runs them");
            None
        }
    }
}

/// The admin secret and where it came from: the configured bootstrap key, or the file
/// the server generated it into (this run or an earlier one).
fn admin_secret(info: &ReadyInfo) -> Option<(String, String)> {
    if let Some(key) = &info.bootstrap_key {
        return Some((key.trim().to_string(), "TANVRIT_BOOTSTRAP_KEY".into()));
    }
    let path = match &info.bootstrap {
        Some(BootstrapOutcome::Generated { path, .. }) => path.clone(),
        _ => info.data_dir.join(ADMIN_KEY_FILE),
    };
    read_secret(&path).map(|secret| (secret, format!("from {}", path.display())))
}

/// Creates `dir` (and its parents) readable by its owner only, and makes an existing one
/// so: a data directory holds job environments and keys. An existing directory this
/// process may not change (another owner's) is used as it is, with a warning.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if let Err(error) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                %error,
                "the data directory is readable by others and cannot be made private"
            );
        }
    }
    Ok(())
}

/// ` TANVRIT_CA_FILE=<ca>` for the `export` line, when the API is over TLS.
pub(crate) fn ca_export(ca_file: Option<&Path>) -> String {
    match ca_file {
        Some(ca) => format!(" TANVRIT_CA_FILE={}", ca.display()),
        None => String::new(),
    }
}

pub(crate) fn read_secret(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let secret = text.trim();
    (!secret.is_empty()).then(|| secret.to_string())
}

/// Writes the welcome top-up (a no-op after the first start: same idempotency key) and
/// returns the business's available balance.
pub(crate) async fn welcome_top_up(
    url: &str,
    ca_file: Option<&Path>,
    secret: &str,
) -> Result<i64, tanvrit_client::ClientError> {
    let client = Client::new(ClientConfig {
        endpoints: vec![url.to_string()],
        api_key: Some(secret.to_string()),
        ca_file: ca_file.map(Path::to_path_buf),
        ..ClientConfig::default()
    })?;
    client
        .create_credit_entry(CreditEntryCreateRequest {
            business: BusinessId::from(DEV_BUSINESS),
            kind: EntryKind::TopUp,
            amount: DEV_WELCOME_CREDITS * MICROS_PER_CREDIT,
            idempotency_key: Some(DEV_WELCOME_KEY.into()),
            note: Some("tanvrit dev welcome credits".into()),
        })
        .await?;
    let balance = client
        .credit_balance(tanvrit_api::CreditBalanceRequest {
            business: Some(BusinessId::from(DEV_BUSINESS)),
            ..Default::default()
        })
        .await?;
    Ok(balance.available)
}

/// The base URL clients use for a bound address (`https://` when served over TLS).
pub(crate) fn client_url(addr: SocketAddr, https: bool) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a handler only SIGTERM (or a kill) ends the server.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_are_created_and_tightened_to_the_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let fresh = root.path().join("a/b");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let old = root.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700, "an existing data directory is tightened");
    }

    #[test]
    fn wildcard_binds_are_reached_through_loopback() {
        assert_eq!(
            client_url("0.0.0.0:7070".parse().unwrap(), false),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            client_url("[::]:7070".parse().unwrap(), false),
            "http://[::1]:7070"
        );
        assert_eq!(
            client_url("10.1.2.3:443".parse().unwrap(), true),
            "https://10.1.2.3:443"
        );
    }
}

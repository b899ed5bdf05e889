//! The command line: global flags, the subcommand tree, and how errors become exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tanvrit_client::config::{split_endpoints, ClientIdentity};
use tanvrit_client::{Client, ClientConfig, ClientError, DEFAULT_ADDR};

use crate::agent::AgentArgs;
use crate::commands::cluster::ClusterCommand;
use crate::commands::credit::CreditCommand;
use crate::commands::job::JobCommand;
use crate::commands::key::KeyCommand;
use crate::commands::node::NodeCommand;
use crate::commands::schedule::ScheduleCommand;
use crate::config::ConfigError;
use crate::output::{Format, Output};
use crate::parse;
use crate::server::{DevArgs, ServerArgs};

/// Exit code of a command that worked.
pub const EXIT_OK: u8 = 0;
/// Exit code of an API or transport error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of a usage error (clap uses the same for the errors it finds).
pub const EXIT_USAGE: u8 = 2;

/// Tanvrit Compute: the control plane of a compute platform, and its client.
#[derive(Debug, Parser)]
#[command(name = "tanvrit", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every client command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Server URL(s), comma-separated; calls fail over between them.
    #[arg(long, env = "TANVRIT_ADDR", default_value = DEFAULT_ADDR, global = true, help_heading = "Global options")]
    pub addr: String,
    /// The API key to send.
    #[arg(
        long,
        env = "TANVRIT_API_KEY",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub api_key: Option<String>,
    /// CA certificate (PEM) that https:// servers must present a certificate of (the
    /// cluster CA `tanvrit tls ca create` made; `tanvrit dev` prints it).
    #[arg(
        long,
        env = "TANVRIT_CA_FILE",
        value_name = "PATH",
        global = true,
        help_heading = "Global options"
    )]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present to a server that asks for one.
    #[arg(
        long,
        env = "TANVRIT_CLIENT_CERT_FILE",
        value_name = "PATH",
        requires = "client_key",
        global = true,
        help_heading = "Global options"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "TANVRIT_CLIENT_KEY_FILE",
        value_name = "PATH",
        requires = "client_cert",
        global = true,
        help_heading = "Global options"
    )]
    pub client_key: Option<PathBuf>,
    /// Print the JSON response (for scripts) instead of tables (the same as `-o json`).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Output format: table, wide (more columns where a list has them), json or yaml.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        global = true,
        help_heading = "Global options"
    )]
    pub output: Option<Format>,
    /// Log lines (stderr) as text or as one JSON object per line (servers and agents).
    #[arg(
        long,
        value_enum,
        env = "TANVRIT_LOG_FORMAT",
        default_value = "text",
        global = true,
        help_heading = "Global options"
    )]
    pub log_format: LogFormat,
    /// Limit for one request, e.g. 30s (long polls add their wait).
    #[arg(long, default_value = "30s", value_parser = parse::duration, global = true, help_heading = "Global options")]
    pub request_timeout: Duration,
    /// Retries for calls that are safe to repeat (reads; writes after a refused
    /// connection or a 503 that applied nothing; writes with an idempotency key after a
    /// 503 `write_outcome_unknown` or a lost answer).
    #[arg(
        long,
        default_value_t = 3,
        global = true,
        help_heading = "Global options"
    )]
    pub retries: u32,
}

impl GlobalArgs {
    /// An SDK client for these flags (read-your-writes on).
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(ClientConfig {
            endpoints: split_endpoints(&self.addr),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            timeout: self.request_timeout,
            max_retries: self.retries,
            read_your_writes: true,
            ca_file: self.ca_file.clone(),
            identity: self.identity(),
            ..ClientConfig::default()
        })
    }

    /// The client certificate to present, when both files are given.
    pub fn identity(&self) -> Option<ClientIdentity> {
        Some(ClientIdentity {
            cert_file: self.client_cert.clone()?,
            key_file: self.client_key.clone()?,
        })
    }

    /// How results are printed.
    pub fn output(&self) -> Output {
        match (self.output, self.json) {
            (Some(format), _) => Output::new(format),
            (None, true) => Output::new(Format::Json),
            (None, false) => Output::new(Format::Table),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line each, colored on a terminal unless NO_COLOR is set.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit, list, inspect, cancel and retry jobs; read their output.
    #[command(subcommand)]
    Job(JobCommand),
    /// Inspect, drain and delete worker nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Create, list and revoke API keys (admin).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Top up and inspect a business's credits.
    #[command(subcommand)]
    Credit(CreditCommand),
    /// Cron schedules that submit jobs.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Replicas, roles and indexes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Follow the event stream: every change, as it is applied (filter by topic,
    /// business, job or node; resume with --from-index).
    Events(crate::commands::events::EventsArgs),
    /// Benchmarks: HTTP submissions at several concurrencies; scheduler placements.
    #[command(subcommand)]
    Bench(crate::commands::bench::BenchCommand),
    /// Make the cluster CA and certificates for replicas, agents and clients.
    #[command(subcommand)]
    Tls(crate::commands::tls::TlsCommand),
    /// Run a single-node replica serving the API (configuration: TOML < TANVRIT_* < flags).
    Server(ServerArgs),
    /// Run a local single-node server for development, with a local agent: prints the
    /// admin key and an `export` line, and gives business `default` 1,000 welcome credits.
    Dev(DevArgs),
    /// Run a worker agent: register this machine as a node and run the jobs placed on it.
    Agent(AgentArgs),
    /// Print a shell completion script: `source <(tanvrit completion bash)`.
    #[command(visible_alias = "completions")]
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The log filter used when `RUST_LOG` is not set: servers say what they do.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Server(_) | Command::Dev(_) | Command::Agent(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = cli.global.output();
    let client = || cli.global.client();
    match cli.command {
        Command::Job(command) => command.run(&client()?, out).await,
        Command::Node(command) => command.run(&client()?, out).await,
        Command::Key(command) => command.run(&client()?, out).await,
        Command::Credit(command) => command.run(&client()?, out).await,
        Command::Schedule(command) => command.run(&client()?, out).await,
        Command::Cluster(command) => command.run(&client()?, out).await,
        Command::Events(args) => crate::commands::events::run_events(&client()?, out, args).await,
        Command::Bench(command) => command.run(|| Ok(client()?), out).await,
        Command::Tls(command) => command.run(),
        Command::Server(args) => crate::server::run_server(args).await,
        Command::Dev(args) => crate::server::run_dev(args).await,
        Command::Agent(args) => crate::agent::run_agent(args, &cli.global).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut stdout = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "tanvrit", &mut stdout);
            Ok(())
        }
    }
}

/// Prints `error: <code>: <message>` to stderr and picks the exit code: 2 for a
/// configuration the user must fix before anything is sent, 1 for everything else.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if closed_stdout(err) {
        return ExitCode::SUCCESS;
    }
    if let Some(client_err) = err.downcast_ref::<ClientError>() {
        eprintln!("error: {}: {}", client_err.code(), client_err.message());
        let usage = matches!(client_err, ClientError::Config(_));
        return ExitCode::from(if usage { EXIT_USAGE } else { EXIT_ERROR });
    }
    if let Some(config_err) = err.downcast_ref::<ConfigError>() {
        eprintln!("error: {}: {config_err}", config_err.code());
        return ExitCode::from(EXIT_ERROR);
    }
    if let Some(server_err) = err.downcast_ref::<tanvrit_server::ServerError>() {
        eprintln!("error: {}: {server_err}", server_err.code());
        return ExitCode::from(EXIT_ERROR);
    }
    if let Some(cluster_err) = err.downcast_ref::<tanvrit_cluster::ClusterError>() {
        eprintln!("error: {}: {cluster_err}", cluster_err.code());
        return ExitCode::from(EXIT_ERROR);
    }
    eprintln!("error: {err:#}");
    ExitCode::from(EXIT_ERROR)
}

/// Whether `err` is a write to a closed stdout (`tanvrit job list | head -1`): the
/// reader has what it wanted, so the command ends quietly with status 0.
fn closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Makes a write to a closed stdout end the program quietly with status 0 where it
/// panics (`println!` does), and leaves every other panic to the default hook.
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(i32::from(EXIT_OK));
        }
        default(info);
    }));
}

/// True when `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

/// Logs go to stderr, filtered by `RUST_LOG` (else `default`), as text (colored only on
/// a terminal and without NO_COLOR) or as JSON lines.
pub fn init_logging(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && !no_color())
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tanvrit").chain(args.iter().copied()))
    }

    #[test]
    fn job_submit_takes_the_command_after_a_double_dash() {
        let cli = parse(&[
            "job",
            "submit",
            "--cpu-millis",
            "500",
            "--label",
            "zone=a",
            "--env",
            "A=1=2",
            "--timeout",
            "10m",
            "--priority",
            "-5",
            "--",
            "echo",
            "--not-a-flag",
        ])
        .unwrap();
        let Command::Job(JobCommand::Submit(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        let spec = args.template.spec();
        assert_eq!(spec.command, vec!["echo", "--not-a-flag"]);
        assert_eq!(spec.resources.cpu_millis, 500);
        assert_eq!(spec.timeout_secs, 600);
        assert_eq!(spec.priority, -5);
        assert_eq!(spec.labels["zone"], "a");
        assert_eq!(spec.env["A"], "1=2");
    }

    #[test]
    fn job_submit_needs_exactly_one_of_a_command_and_shell() {
        assert_eq!(
            parse(&["job", "submit"]).unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert!(parse(&["job", "submit", "--shell", "echo hi"]).is_ok());
        assert_eq!(
            parse(&["job", "submit", "--shell", "x", "--", "echo"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn usage_errors_exit_with_code_two() {
        let err =
            parse(&["credit", "add", "--business", "b", "--amount", "0.0000001"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        let err = parse(&["credit", "add", "--business", "b"]).unwrap_err();
        assert_eq!(
            err.exit_code(),
            i32::from(EXIT_USAGE),
            "an amount is required"
        );
        let err = parse(&["node", "drain", "n1", "--deadline", "10"]).unwrap_err();
        assert_eq!(
            err.exit_code(),
            i32::from(EXIT_USAGE),
            "a duration needs a unit"
        );
    }

    #[test]
    fn credit_amounts_may_be_negative_adjustments() {
        let cli = parse(&[
            "credit",
            "add",
            "--business",
            "b",
            "--amount",
            "-2.5",
            "--kind",
            "adjustment",
        ])
        .unwrap();
        let Command::Credit(CreditCommand::Add { amount, kind, .. }) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(amount, Some(-2_500_000));
        assert_eq!(kind, tanvrit_api::EntryKind::Adjustment);
    }

    #[test]
    fn schedule_update_cannot_enable_and_disable_at_once() {
        assert!(parse(&["schedule", "update", "s1", "--enable"]).is_ok());
        assert_eq!(
            parse(&["schedule", "update", "s1", "--enable", "--disable"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn global_flags_go_anywhere_and_build_the_client() {
        let cli = parse(&[
            "job",
            "list",
            "--json",
            "--addr",
            "a:1,http://b:2",
            "--retries",
            "0",
        ])
        .unwrap();
        assert!(cli.global.json);
        let client = cli.global.client().unwrap();
        assert_eq!(client.config().endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(client.config().max_retries, 0);
    }

    #[test]
    fn agent_flags_build_its_configuration_and_client() {
        let cli = parse(&[
            "agent",
            "--server",
            "a:1,http://b:2",
            "--key",
            "agent-key",
            "--labels",
            "zone=a,disk=ssd",
            "--labels",
            "gpu=none",
            "--cpu-millis",
            "500",
            "--stop-grace",
            "2s",
            "--data-dir",
            "/tmp/agent-x",
        ])
        .unwrap();
        let Command::Agent(args) = &cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        let config = args.agent_config();
        assert_eq!(config.resources.cpu_millis, 500);
        assert!(config.resources.memory_mb > 0 || !std::path::Path::new("/proc/meminfo").exists());
        assert_eq!(config.labels.len(), 3);
        assert_eq!(config.labels["disk"], "ssd");
        assert_eq!(config.stop_grace, Duration::from_secs(2));
        assert_eq!(config.data_dir, std::path::PathBuf::from("/tmp/agent-x"));
        let client = args.client(&cli.global).unwrap();
        assert_eq!(client.config().endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(client.config().api_key.as_deref(), Some("agent-key"));
    }

    #[test]
    fn the_agent_key_comes_from_a_file_and_isolation_from_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, "file-key\n").unwrap();
        let cli = parse(&[
            "agent",
            "--server",
            "a:1",
            "--key-file",
            key_file.to_str().unwrap(),
            "--isolation",
            "none",
            "--job-uids",
            "5000-5009",
            "--pids-max",
            "64",
            "--work-dir",
            "/srv/jobs",
        ])
        .unwrap();
        let Command::Agent(args) = &cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        let global = GlobalArgs {
            api_key: None,
            ..cli.global
        };
        let client = args.client(&global).unwrap();
        assert_eq!(client.config().api_key.as_deref(), Some("file-key"));
        let isolation = args.agent_config().isolation;
        assert_eq!(isolation.mode, tanvrit_agent::IsolationMode::None);
        assert_eq!(isolation.job_uids.to_string(), "5000-5009");
        assert_eq!(isolation.pids_max, 64);
        assert_eq!(
            isolation.work_root,
            Some(std::path::PathBuf::from("/srv/jobs"))
        );
        assert!(parse(&["agent", "--isolation", "chroot"]).is_err());
        assert!(parse(&["agent", "--job-uids", "0-10"]).is_err());
    }

    #[test]
    fn an_agent_reads_its_key_from_a_file_kept_out_of_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        std::fs::write(&path, "tvk_key-1_secret\n").unwrap();
        let path = path.display().to_string();
        let cli = parse(&["agent", "--server", "a:1", "--key-file", &path]).unwrap();
        let Command::Agent(args) = &cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        let client = args.client(&cli.global).unwrap();
        assert_eq!(client.config().api_key.as_deref(), Some("tvk_key-1_secret"));
        assert!(
            parse(&["agent", "--key-file", &path, "--key", "k"]).is_err(),
            "one or the other"
        );
        let missing =
            parse(&["agent", "--server", "a:1", "--key-file", "/nonexistent/key"]).unwrap();
        let Command::Agent(args) = &missing.command else {
            panic!("parsed as {:?}", missing.command)
        };
        let Err(err) = args.client(&missing.global) else {
            panic!("a client from a missing key file")
        };
        assert_eq!(err.code(), "config");
    }

    #[test]
    fn an_agent_without_a_key_is_a_usage_error() {
        let cli = parse(&["agent", "--server", "a:1"]).unwrap();
        let Command::Agent(args) = &cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        let global = GlobalArgs {
            api_key: None,
            ..cli.global
        };
        let Err(err) = args.client(&global) else {
            panic!("a client without a key")
        };
        assert_eq!(err.code(), "config");
        assert!(err.message().contains("--key"), "{err}");
    }
}

//! Command-line interface (DESIGN.md, "Command-line contract"). Bad flags or config: one line
//! naming the field, exit code 2, nothing attached or announced.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    admin::{self, doctor},
    config::{self, Overrides},
    dataplane::{paths::PinPaths, status},
    error_chain,
    run::{self, RunOptions},
};

#[derive(Debug, Parser)]
#[command(
    name = "vipwire",
    version,
    about = "XDP VIP dataplane agent for bare-metal Kubernetes"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach XDP to the interfaces, answer ARP/NDP for the VIPs this node owns.
    Run(RunArgs),
    /// What this node owns and counts: asks the running agent, else reads the pinned maps.
    Status(StatusArgs),
    /// Host checks: bpffs, XDP mode per interface, rp_filter, the agent, VIP conflicts,
    /// .0/.255 VIPs. Exits 1 when a check fails.
    Doctor(DoctorArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (YAML, see DESIGN.md); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read Services, EndpointSlices and Nodes from this directory of manifests (re-read on
    /// change) instead of watching the cluster.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// This node's name [default: $NODE_NAME, then the hostname].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Interface to attach XDP to and answer ARP/NDP on (repeatable).
    #[arg(long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Where maps and links are pinned [default: /sys/fs/bpf/vipwire].
    #[arg(long, value_name = "DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// Stop answering this long after the agent's last heartbeat (e.g. 5s) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Admin endpoint address [default: 127.0.0.1:9469].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// On shutdown, detach the XDP programs and remove every pin (default: leave the dataplane
    /// running for the next agent, which takes it over without a gap).
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// Level of the BPF programs' own logs (rare events only).
    #[arg(long, value_enum, default_value_t = BpfLogLevel::Warn)]
    pub bpf_log_level: BpfLogLevel,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Machine-readable output (stable field names).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: AgentTarget,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub target: AgentTarget,
}

/// How `status` and `doctor` find an agent that does not use the defaults.
#[derive(Debug, clap::Args)]
pub struct AgentTarget {
    /// The agent's admin endpoint [default: admin.listen of --config, else 127.0.0.1:9469].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Where the agent pins its maps [default: bpffsDir of --config, else /sys/fs/bpf/vipwire].
    #[arg(long, value_name = "DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// Config file of the agent to inspect (for its admin.listen, bpffsDir and interfaces).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What [`AgentTarget`] resolves to.
struct Target {
    admin: SocketAddr,
    bpffs_dir: PathBuf,
    interfaces: Vec<String>,
}

impl AgentTarget {
    fn resolve(&self) -> Result<Target, config::ConfigError> {
        let (file_admin, file_dir, interfaces) = match &self.config {
            Some(file) => {
                // Only the fields that locate the agent matter here: satisfy the rest.
                let config =
                    config::load(Some(file), Overrides::default(), Some("status".to_owned()))
                        .or_else(|_| {
                            config::load(
                                Some(file),
                                Overrides {
                                    interfaces: vec!["lo".to_owned()],
                                    ..Overrides::default()
                                },
                                Some("status".to_owned()),
                            )
                            .map(|mut c| {
                                c.interfaces.clear();
                                c
                            })
                        })?;
                (
                    Some(config.admin_listen),
                    Some(config.bpffs_dir),
                    config.interfaces,
                )
            }
            None => (None, None, Vec::new()),
        };
        Ok(Target {
            admin: self
                .admin
                .or(file_admin)
                .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default")),
            bpffs_dir: self
                .bpffs_dir
                .clone()
                .or(file_dir)
                .unwrap_or_else(|| PathBuf::from(crate::dataplane::paths::DEFAULT_BPFFS_DIR)),
            interfaces,
        })
    }
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9469";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BpfLogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<BpfLogLevel> for aya_log::Level {
    fn from(level: BpfLogLevel) -> Self {
        match level {
            BpfLogLevel::Error => aya_log::Level::Error,
            BpfLogLevel::Warn => aya_log::Level::Warn,
            BpfLogLevel::Info => aya_log::Level::Info,
            BpfLogLevel::Debug => aya_log::Level::Debug,
            BpfLogLevel::Trace => aya_log::Level::Trace,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// Exit code for bad flags, config or manifests (clap uses it for bad flags too).
const EXIT_USAGE: u8 = 2;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Status(args) => status_command(&args),
        Command::Doctor(args) => doctor_command(&args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file, the journal or `kubectl logs` would show the
    // escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run_command(args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        node_name: args.node_name,
        interfaces: args.interfaces,
        bpffs_dir: args.bpffs_dir,
        heartbeat_timeout: args.heartbeat_timeout,
        admin_listen: args.admin,
    };
    let config = match config::load(args.config.as_deref(), overrides, default_node_name()) {
        Ok(config) => config,
        Err(err) => return usage_error(&err),
    };
    let options = RunOptions {
        manifests: args.manifests,
        cleanup_on_exit: args.cleanup_on_exit,
        bpf_log_level: args.bpf_log_level.into(),
    };
    match run::run(config, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(run::RunError::Usage(message)) => {
            eprintln!("vipwire: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            eprintln!("vipwire: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn status_command(args: &StatusArgs) -> ExitCode {
    let target = match args.target.resolve() {
        Ok(target) => target,
        Err(err) => return usage_error(&err),
    };
    let agent_error = match admin::client::get(target.admin, "/status") {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(value) if args.json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("JSON serializes")
                );
                return ExitCode::SUCCESS;
            }
            Ok(value) => {
                print!("{}", admin::status::to_text(&value));
                return ExitCode::SUCCESS;
            }
            Err(err) => format!("the agent on {} sent invalid JSON: {err}", target.admin),
        },
        Ok((code, _)) => format!("the agent on {} answered {code}", target.admin),
        Err(err) => error_chain(&err),
    };
    // The fallback says so: on stderr, so `--json` output stays one document.
    eprintln!("vipwire: {agent_error}; reading the pinned maps instead");
    match status::read(&PinPaths::new(target.bpffs_dir)) {
        Ok(status) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("status serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", status.to_text());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("vipwire: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn doctor_command(args: &DoctorArgs) -> ExitCode {
    let target = match args.target.resolve() {
        Ok(target) => target,
        Err(err) => return usage_error(&err),
    };
    let checks = doctor::run(&doctor::DoctorInput {
        admin: target.admin,
        bpffs_dir: target.bpffs_dir,
        interfaces: target.interfaces,
    });
    for check in &checks {
        println!("{check}");
    }
    if checks.iter().any(|c| c.level == doctor::Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage_error(err: &dyn std::error::Error) -> ExitCode {
    eprintln!("vipwire: {}", error_chain(err));
    ExitCode::from(EXIT_USAGE)
}

fn default_node_name() -> Option<String> {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
}

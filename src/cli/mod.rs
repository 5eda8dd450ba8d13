//! The `ferry` command line: `run` the bridge, `check` a configuration,
//! see and steer a running ferry (`status`, `link`, `reload`), and repair
//! (`store`) or inspect (`queue`) the store of a stopped one.

mod admin_client;
mod queue_tools;
pub(crate) mod render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Passwords};
use crate::daemon::control::{ProcessView, RateReply, ReloadReport};
use crate::link::supervisor::Command as LinkCommand;
use crate::names::Direction;

/// ferry: a durable store-and-forward MQTT bridge.
///
/// ferry runs beside a hub broker and bridges it to many edge brokers. Every
/// message is written to disk before it is acknowledged to the broker it came
/// from, and removed only after the broker it goes to acknowledged it: an edge
/// that is away for hours, or ferry killed -9, loses nothing.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bridge until SIGTERM or SIGINT.
    ///
    /// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=ferry=debug) for more.
    /// Metrics are served at http://<metrics.listen>/metrics.
    Run {
        /// The configuration file (TOML). See docs/configuration.md.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration and print the links and routes ferry understood.
    ///
    /// Exits 1 with `file:line:column: what is wrong` on a bad file. Starts
    /// nothing and touches no broker or data_dir. With [fleet], also prints
    /// each shard's links.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Also print which links move from a fleet of OLD shards to the
        /// configured [fleet] shards (before changing the number of instances).
        #[arg(long, value_name = "OLD", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::fleet::MAX_SHARDS)))]
        from_shards: Option<u32>,
    },
    /// Show every link of a running ferry: state, queues, last error.
    ///
    /// Asks the admin API ([admin] listen in the config). STATE is one of
    /// connected, connecting (retrying; see LAST ERROR), paused, draining,
    /// restarting, disabled, stopped. OLDEST is the age of the oldest queued
    /// message. Exits 1 when ferry cannot be reached.
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the API's JSON instead of the table (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Pause, resume, restart, drain or pace one link of a running ferry.
    ///
    /// pause:   stop forwarding; messages keep being received and queued.
    /// resume:  forward (and receive) again.
    /// restart: close and reopen all of the link's connections.
    /// drain:   stop receiving (the source brokers hold new messages in
    ///          ferry's sessions), forward until the queues are empty, then
    ///          pause. Use before maintenance of the link or of ferry.
    /// rate:    pace the link's drains: `ferry link rate NAME 500/s` (messages
    ///          per second), `--bytes 1MiB/s` (bytes per second), `off`.
    ///          At once, also mid-backlog; until the next reload or restart
    ///          of ferry (then drain_rate/drain_bytes_rate of the config apply).
    /// Other links are not touched. A pause lasts until resume, a reload
    /// that changes the link, or a restart of ferry.
    Link {
        #[arg(value_enum)]
        action: LinkAction,
        /// The link's name, as in the config.
        name: String,
        /// For `rate`: messages per second, like 500/s, or off.
        #[arg(value_name = "RATE")]
        rate: Option<String>,
        /// For `rate`: bytes per second, like 1MiB/s, or off.
        #[arg(long, value_name = "RATE")]
        bytes: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make a running ferry read its config file again (like SIGHUP).
    ///
    /// Added links start, removed links stop (their queues stay on disk),
    /// changed links restart, the others are not touched. A file that
    /// `ferry check` refuses changes nothing; the error is printed.
    Reload {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Operate on the store of a ferry that is not running.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Inspect, export or purge the queues of a ferry that is not running.
    ///
    /// These read the store under the config's data_dir and refuse while a
    /// ferry uses it (use `ferry status` for live numbers). Exit codes: 0 ok,
    /// 1 error, 2 bad usage.
    #[command(subcommand)]
    Queue(QueueCommand),
}

/// Which running ferry to talk to.
#[derive(clap::Args, Debug)]
struct AdminTarget {
    /// The running ferry's configuration file; its [admin] listen is used.
    #[arg(short, long, value_name = "FILE", required_unless_present = "admin")]
    config: Option<PathBuf>,
    /// The admin API address instead, like 127.0.0.1:9465.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The file with the admin API's bearer token (the [admin] token_file
    /// of the running ferry). With --config, that file's token_file is used
    /// unless this is given.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// `ferry link ACTION`: the supervisor's actions, and `rate` (the drain
/// pace, which the admin API changes without the supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkAction {
    Command(LinkCommand),
    Rate,
}

const LINK_ACTIONS: [LinkAction; 5] = [
    LinkAction::Command(LinkCommand::ALL[0]),
    LinkAction::Command(LinkCommand::ALL[1]),
    LinkAction::Command(LinkCommand::ALL[2]),
    LinkAction::Command(LinkCommand::ALL[3]),
    LinkAction::Rate,
];

/// The link actions on the command line, spelled as everywhere else.
impl ValueEnum for LinkAction {
    fn value_variants<'a>() -> &'a [Self] {
        &LINK_ACTIONS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            LinkAction::Command(command) => command.as_str(),
            LinkAction::Rate => "rate",
        }))
    }
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// Per queue: messages, bytes, oldest and newest message, lifetime totals.
    ///
    /// Lists every queue in the store, also those of links no longer in the
    /// configuration (marked "not in config").
    Stats {
        /// The configuration file (TOML), for its data_dir and links.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the oldest messages of a queue, with a payload preview.
    Peek {
        /// The link's name.
        link: String,
        /// Which of the link's queues.
        #[arg(short, long, value_enum, default_value_t = DirectionArg::Out)]
        direction: DirectionArg,
        /// How many messages.
        #[arg(short = 'n', long = "count", default_value_t = 10)]
        n: usize,
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write every message of a queue to stdout as JSON lines, oldest first.
    ///
    /// Fields: seq, topic, qos, retain, received_at (RFC 3339),
    /// received_at_ms, payload_base64, properties (when any is set).
    Export {
        /// The link's name.
        link: String,
        /// Which of the link's queues.
        #[arg(short, long, value_enum, default_value_t = DirectionArg::Out)]
        direction: DirectionArg,
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Delete the queued messages of a link (both directions unless --direction).
    ///
    /// They are counted as dropped with reason `purged`. Without --yes,
    /// only prints what would be deleted.
    Purge {
        /// The link's name (also a link no longer in the configuration).
        link: String,
        /// Only this direction's queue.
        #[arg(short, long, value_enum)]
        direction: Option<DirectionArg>,
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// A queue's direction on the command line.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum DirectionArg {
    /// Hub -> edge.
    Out,
    /// Edge -> hub.
    In,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Direction {
        match d {
            DirectionArg::Out => Direction::Out,
            DirectionArg::In => Direction::In,
        }
    }
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Move a damaged store aside so ferry can start with empty queues.
    ///
    /// Use it when `ferry run` refuses to start because the store is damaged.
    /// The store and its ledger are renamed to `<data_dir>/store.damaged-<time>`
    /// (kept for inspection, never deleted). Refused while a ferry runs.
    Quarantine {
        /// The configuration file (TOML), for its data_dir.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Parses the command line and runs the command. The one place that prints
/// an error: `error: ` and the error with its context, on stderr.
pub fn main() -> ExitCode {
    match try_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<Usage>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command line that clap accepts but that cannot be run: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(&'static str);

fn try_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status { target, json } => {
            let reply = admin_call(&target, "GET", "/v1/status")?;
            if json {
                println!("{:#}", reply.body);
            } else {
                let view: ProcessView = reply.parse().map_err(anyhow::Error::msg)?;
                print!("{}", admin_client::render_status(&view, crate::metrics::now_ms()));
            }
        }
        Command::Link {
            action: LinkAction::Rate,
            name,
            rate,
            bytes,
            target,
        } => {
            let mut query = Vec::new();
            for (key, value, parse) in [
                ("drain_rate", &rate, crate::config::parse_drain_rate as fn(&str) -> _),
                ("drain_bytes_rate", &bytes, crate::config::parse_drain_bytes_rate),
            ] {
                if let Some(value) = value {
                    parse(value).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
                    query.push(format!("{key}={}", value.trim().replace(' ', "+")));
                }
            }
            if query.is_empty() {
                return Err(Usage("give a rate: `ferry link rate NAME 500/s` (or off), --bytes 1MiB/s").into());
            }
            let reply = admin_call(&target, "POST", &format!("/v1/links/{name}/rate?{}", query.join("&")))?;
            let reply: RateReply = reply.parse().map_err(anyhow::Error::msg)?;
            println!(
                "link {name}: drain pace {} (until {})",
                admin_client::describe_pace(&reply.pace.now),
                reply.until
            );
        }
        Command::Link { rate: Some(_), .. } | Command::Link { bytes: Some(_), .. } => {
            return Err(Usage("only `ferry link rate` takes a rate").into());
        }
        Command::Link {
            action: LinkAction::Command(action),
            name,
            target,
            ..
        } => {
            admin_call(&target, "POST", &format!("/v1/links/{name}/{}", action.as_str()))?;
            let done = match action {
                LinkCommand::Pause => "paused: forwarding stopped, messages keep being queued",
                LinkCommand::Resume => "resumed",
                LinkCommand::Restart => "restarting",
                LinkCommand::DrainThenPause => "draining: receiving stopped; it pauses when its queues are empty",
            };
            println!("link {name}: {done}");
        }
        Command::Reload { target } => {
            let reply = admin_call(&target, "POST", "/v1/reload")?;
            let report: ReloadReport = reply.parse().map_err(anyhow::Error::msg)?;
            println!("reloaded. {}", report.summary());
        }
        Command::Check { config, from_shards } => {
            let cfg = load(&config)?;
            for warning in &cfg.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", cfg.summary());
            if let Some(old) = from_shards {
                print!("\n{}", cfg.shard_moves(old));
            }
            println!("{}: OK", config.display());
        }
        Command::Queue(command) => queue(command)?,
        Command::Store(StoreCommand::Quarantine { config }) => {
            let cfg = load_without_passwords(&config)?;
            // A StoreError's message already ends with its cause: print it once.
            let aside = crate::store::quarantine(&cfg.data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "moved the store aside to {}; ferry will start with empty queues",
                aside.display()
            );
        }
        Command::Run { config } => {
            init_logging();
            let cfg = load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(crate::daemon::run::run(cfg))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the configuration; its error names the file, line and column.
fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Like [`load`] for commands that connect to no broker: the broker
/// passwords are not read, so they run without ferry's environment.
fn load_without_passwords(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load_with(path, Passwords::Skip)?)
}

fn queue(command: QueueCommand) -> anyhow::Result<()> {
    let config = match &command {
        QueueCommand::Stats { config, .. }
        | QueueCommand::Peek { config, .. }
        | QueueCommand::Export { config, .. }
        | QueueCommand::Purge { config, .. } => config,
    };
    let cfg = load_without_passwords(config)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        QueueCommand::Stats { json, .. } => queue_tools::stats(&cfg, json, &mut out),
        QueueCommand::Peek { link, direction, n, .. } => queue_tools::peek(&cfg, &link, direction.into(), n, &mut out),
        QueueCommand::Export { link, direction, .. } => queue_tools::export(&cfg, &link, direction.into(), &mut out),
        QueueCommand::Purge {
            link, direction, yes, ..
        } => {
            let directions = match direction {
                Some(d) => vec![d.into()],
                None => vec![Direction::Out, Direction::In],
            };
            queue_tools::purge(&cfg, &link, &directions, yes, &mut out)
        }
    }?;
    // A reader that went away (`| head`) is not an error.
    match std::io::Write::flush(&mut out) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=off"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// One admin API request; a reply that is not a success is an error.
fn admin_call(target: &AdminTarget, method: &str, path: &str) -> anyhow::Result<admin_client::Reply> {
    let config = match (&target.admin, &target.config) {
        (Some(_), _) => None,
        (None, Some(config)) => Some(load_without_passwords(config)?),
        (None, None) => return Err(Usage("give --config FILE or --admin ADDR").into()),
    };
    let addr = match (&target.admin, &config) {
        (Some(addr), _) => *addr,
        (None, Some(config)) => admin_client::admin_address(config).map_err(anyhow::Error::msg)?,
        (None, None) => return Err(Usage("give --config FILE or --admin ADDR").into()),
    };
    let token = match (&target.token_file, &config) {
        (Some(file), _) => Some(
            crate::config::token_from_file(file)
                .map_err(|why| anyhow::anyhow!("--token-file {}: {why}", file.display()))?,
        ),
        (None, Some(config)) => config.admin.token.clone(),
        (None, None) => None,
    };
    let reply = admin_client::request(addr, method, path, token.as_ref()).map_err(anyhow::Error::msg)?;
    if !reply.ok() {
        anyhow::bail!("{}", reply.error_text());
    }
    Ok(reply)
}

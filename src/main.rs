//! The `ferry` command line: `run` the bridge, `check` a configuration,
//! repair (`store`) or inspect (`queue`) the store of a stopped ferry.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use ferry::config::{Config, Direction};
use ferry::queue_tools;

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
    /// nothing and touches no broker or data_dir.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                print!("{}", cfg.summary());
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Queue(command) => queue(command),
        Command::Store(StoreCommand::Quarantine { config }) => {
            let cfg = match load(&config) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            match ferry::store::quarantine(&cfg.data_dir) {
                Ok(aside) => {
                    println!("moved the store aside to {}; ferry will start with empty queues", aside.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            init_logging();
            let cfg = match load(&config) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(ferry::run::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the configuration, or says why not.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

fn queue(command: QueueCommand) -> ExitCode {
    let config = match &command {
        QueueCommand::Stats { config, .. }
        | QueueCommand::Peek { config, .. }
        | QueueCommand::Export { config, .. }
        | QueueCommand::Purge { config, .. } => config,
    };
    let cfg = match load(config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match command {
        QueueCommand::Stats { json, .. } => queue_tools::stats(&cfg, json, &mut out),
        QueueCommand::Peek { link, direction, n, .. } => queue_tools::peek(&cfg, &link, direction.into(), n, &mut out),
        QueueCommand::Export { link, direction, .. } => queue_tools::export(&cfg, &link, direction.into(), &mut out),
        QueueCommand::Purge { link, direction, yes, .. } => {
            let directions = match direction {
                Some(d) => vec![d.into()],
                None => vec![Direction::Out, Direction::In],
            };
            queue_tools::purge(&cfg, &link, &directions, yes, &mut out)
        }
    };
    // A reader that went away (`| head`) is not an error.
    let result = result.and_then(|()| match std::io::Write::flush(&mut out) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=off"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

//! The `ferry` command line: `run` the bridge, `check` a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ferry::config::Config;

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
    tune_allocator();
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
        Command::Store(StoreCommand::Quarantine { config }) => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
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
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=off"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// glibc's allocator, set before any thread starts: one arena, and freed
/// memory given back to the system at once. With its defaults (an arena per
/// thread: tokio's workers, its blocking pool, sled's threads) ferry holding
/// a 300,000-message backlog behind 37 links kept 132 MiB of RSS, most of it
/// freed but retained heap, even after the backlog drained; with these
/// settings 65 MiB, at the same drain rate (docs/performance.md). Either
/// setting alone saved far less. The environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_TRIM_THRESHOLD_`) can still override both.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    let set_by_env = |name: &str| std::env::var_os(name).is_some();
    // SAFETY: mallopt only changes allocator parameters; it is called first
    // thing in main, before any other thread exists.
    unsafe {
        if !set_by_env("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        if !set_by_env("MALLOC_TRIM_THRESHOLD_") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

//! The `sluice` binary: parse the command line, load the config, run, exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice::config::ConfigErrors;

/// A sidecar reverse proxy that enforces per-route quotas and measures SLAs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the config file; SIGHUP reloads it, SIGTERM drains and exits, SIGUSR2
    /// upgrades to the executable now at this one's path (docs/lifecycle.md).
    Run {
        #[arg(long, env = "SLUICE_CONFIG", default_value = sluice::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check a config file without opening any socket.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the Prometheus recording and alert rules of every route's SLA (docs/deploy.md).
    Rules {
        #[arg(long)]
        config: PathBuf,
        /// Label matchers added to every selector, for a Prometheus that scrapes several
        /// services: `namespace="shop"`.
        #[arg(long)]
        selector: Option<String>,
        /// The alerts' runbook_url annotation.
        #[arg(long)]
        runbook_url: Option<String>,
    },
    /// The audit log of the control API.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A built-in service with sluice in front of it and traffic that hits the quotas.
    Demo {
        /// Stop after this long (e.g. `30s`); runs until Ctrl-C by default.
        #[arg(long, value_parser = sluice::config::parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log (`<state_dir>/audit.jsonl`): prints `ok` and
    /// the record count (exit 0), or the first broken line (exit 1).
    Verify { path: PathBuf },
}

/// sysexits' EX_USAGE: the config given at start is not usable.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Validate { config: path } => match sluice::config::load(&path) {
            Ok(config) => {
                // It may run where the secrets are not mounted: a warning, not a failure.
                if let Some(unreadable) = unreadable_tokens(&path, &config) {
                    for line in unreadable.to_string().lines() {
                        eprintln!("warning: {line}");
                    }
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Run { config: path } => runtime().block_on(run(path)),
        Command::Rules { config: path, selector, runbook_url } => {
            if let Some(Err(why)) = selector.as_deref().map(sluice::rules::check_selector) {
                eprintln!("--selector: {why}");
                return ExitCode::from(2);
            }
            match sluice::config::load(&path) {
                Ok(config) => {
                    print!("{}", sluice::rules::render(&config, &sluice::rules::Options { selector, runbook_url }));
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Audit { command: AuditCommand::Verify { path } } => match sluice::control::audit::verify(&path) {
            Ok(records) => {
                println!("ok: {records} records");
                ExitCode::SUCCESS
            }
            Err((line, why)) => {
                eprintln!("{}:{line}: {why}", path.display());
                ExitCode::from(1)
            }
        },
        Command::Demo { duration } => exit(runtime().block_on(async { Ok(sluice::demo::run(duration).await?) })),
    }
}

/// `sluice run`: loads the config and serves until signalled. Started by a binary upgrade
/// (SIGUSR2), it takes the listeners and state of the process that started it, and tells
/// that process when its config is bad.
async fn run(path: PathBuf) -> ExitCode {
    // First: a signal from here on waits for the serving loop rather than killing the process.
    let signals = match sluice::server::Signals::take() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("sluice: cannot take the signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let takeover = match sluice::lifecycle::takeover::Takeover::from_env().await {
        Ok(takeover) => takeover,
        Err(e) => {
            eprintln!("sluice: cannot take over from the process that started this one: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = sluice::config::load(&path).map_err(|errors| errors.to_string()).and_then(|config| {
        match unreadable_tokens(&path, &config) {
            Some(unreadable) => Err(unreadable.to_string()),
            None => Ok(config),
        }
    });
    let config = match config {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            if let Some(takeover) = takeover {
                takeover.failed(&errors).await;
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    exit(
        async {
            let running = match takeover {
                Some(takeover) => sluice::server::take_over(config, Some(path), takeover).await?,
                None => sluice::server::start(config, Some(path)).await?,
            };
            sluice::server::run_until_signalled(running, signals).await?;
            Ok(())
        }
        .await,
    )
}

/// The tokens of `config` (read from `path`) whose source cannot be read, placed in the
/// file; `None` when every one can.
fn unreadable_tokens(path: &std::path::Path, config: &sluice::config::Config) -> Option<ConfigErrors> {
    let problems = sluice::config::tokens::problems(config);
    if problems.is_empty() {
        return None;
    }
    let text = sluice::config::read(path).unwrap_or_default();
    Some(ConfigErrors { source: Some(path.display().to_string()), errors: sluice::config::place_all(&text, problems) })
}

/// The control plane's runtime: the admin API, reloads, the SLA monitor. The data plane
/// runs on worker threads of its own (`proxy::listener::start`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    // Colour only for a person at a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

//! `palaver`: run one palaver node.
//!
//! ```text
//! palaver [--config PATH]     run a node (configuration: see cluster.toml)
//! palaver check-config [--config PATH]   load and validate the configuration, then exit
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use node::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const USAGE: &str = "usage: palaver [check-config] [--config PATH]\n\
  Runs a palaver node. Configuration: defaults, then the TOML file (--config, PALAVER_CONFIG,\n\
  or ./cluster.toml), then PALAVER_* environment variables (PALAVER_LIMITS__MAX_FRAME_BYTES=...).";

/// How many tasks a runtime worker runs between two looks at the sockets (tokio's default is
/// 61). A commit into a large room wakes a session per member connection, and while a worker
/// works through them it does not see what arrived on any socket — the publishers' next frames
/// among it, which is what keeps the rooms committing. Looking more often costs a system call
/// per look; fanning out to 1,000 members at full speed it bought 2.16–2.86 M deliveries/s
/// (7 runs, mean 2.63 M) against 2.13–2.73 M (5 runs, mean 2.32 M) with the default, and the
/// p99 51–76 ms against 76–92 ms (bench/findings.md).
const IO_POLL_INTERVAL: u32 = 17;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_arg = None;
    let mut check_only = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_arg = Some(PathBuf::from(path)),
                None => return usage_error("--config needs a path"),
            },
            "check-config" => check_only = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("palaver {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument `{other}`")),
        }
    }
    let path = node::config_path(config_arg);
    let config = match Config::load(path.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("palaver: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("configuration OK ({})", path.map_or("defaults and environment".into(), |p| p.display().to_string()));
        return ExitCode::SUCCESS;
    }
    let telemetry = match init_tracing(&config) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("palaver: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().event_interval(IO_POLL_INTERVAL).enable_all().build() {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("palaver: cannot start the runtime: {err}");
                return ExitCode::FAILURE;
            }
        };
    let result = runtime.block_on(run_until_signal(config));
    // Every task holding the store has ended: the rooms' thread was stopped at the end of `run`,
    // the rest end with the runtime. Only then may backends stop.
    drop(runtime);
    node::store::shutdown_backends();
    // The last spans leave before the process does.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "node failed");
            eprintln!("palaver: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        let _ = stop_tx.send(true);
    });
    node::run(config, stop_rx).await
}

/// Logs to stderr as `[log]` says, and spans over OTLP if `[tracing]` names an endpoint. Each
/// has its own filter, so exporting spans changes nothing in the logs. The returned handle
/// flushes the last spans when dropped.
fn init_tracing(config: &Config) -> Result<Option<node::telemetry::Telemetry>, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = if config.log.format == "json" { logs.json().boxed() } else { logs.boxed() };
    let export = node::telemetry::layer(&config.tracing, &config.node.name)
        .map_err(|err| format!("tracing.otlp_endpoint: cannot export spans: {err}"))?;
    let (spans, telemetry) = match export {
        Some((layer, telemetry)) => (Some(layer), Some(telemetry)),
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(spans).init();
    Ok(telemetry)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("palaver: {message}\n{USAGE}");
    ExitCode::from(2)
}

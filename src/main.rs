//! The `ferroway` command line: `run`, `check` and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferroway::config::{self, Config};
use ferroway::{demo, server, snapshot};

#[derive(Parser)]
#[command(name = "ferroway", version, about = "An API gateway and reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a config file.
    Run {
        /// The YAML config file.
        #[arg(long, short, env = "FERROWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file without binding anything; lists every problem found.
    Check {
        /// The YAML config file.
        config: PathBuf,
        /// Also list what a reload from this config file would change.
        #[arg(long, value_name = "FILE", conflicts_with = "admin")]
        against: Option<PathBuf>,
        /// Also list what a reload would change in the gateway whose admin listener is here
        /// (reads its GET /config; the token, if any, from FERROWAY_ADMIN_TOKEN).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
    /// Start sample backends and the gateway in front of them (examples/demo.yaml).
    Demo {
        /// Use this config instead of the built-in copy of examples/demo.yaml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

const DEMO_YAML: &str = include_str!("../examples/demo.yaml");

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, against, admin } => check(&config, against.as_deref(), admin.as_deref()),
        Command::Run { config } => exit(run_config(&config, false)),
        Command::Demo { config } => exit(match config {
            Some(path) => run_config(&path, true),
            None => config::load_str(DEMO_YAML, Path::new("examples/demo.yaml"), std::env::vars().collect())
                .map_err(anyhow::Error::from)
                .and_then(|c| serve(c, None, true)),
        }),
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path, against: Option<&Path>, admin: Option<&str>) -> ExitCode {
    match config::load(path) {
        Ok(c) => match snapshot::compile(&c, &Default::default()) {
            Ok(_) => {
                println!("{}: ok: {}", path.display(), snapshot::summary(&c));
                let running = match (against, admin) {
                    (Some(file), _) => Some((file.display().to_string(), document_of(file))),
                    (None, Some(addr)) => Some((format!("the gateway at {addr}"), running_document(addr))),
                    (None, None) => None,
                };
                if let Some((what, old)) = running {
                    match old {
                        Ok(old) => {
                            let changes = config::view::diff(&old, &c.document);
                            if changes.is_empty() {
                                println!("no changes against {what}");
                            } else {
                                println!("changes against {what}:");
                                for line in changes {
                                    println!("  {line}");
                                }
                            }
                        }
                        Err(e) => {
                            eprintln!("ferroway: cannot compare with {what}: {e:#}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A config file's document (after `${ENV}`, secrets redacted), read without checking it: the
/// file being replaced may itself be the broken one.
fn document_of(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let tree = config::node::parse(&text, std::env::vars().collect()).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(config::view::redacted(&tree))
}

/// `GET /config` of a running gateway's admin listener.
fn running_document(addr: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let mut req = http::Request::get(format!("http://{addr}/config")).body(http_body_util::Empty::new())?;
        if let Ok(token) = std::env::var("FERROWAY_ADMIN_TOKEN") {
            req.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        }
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
            .await
            .context("no answer within 10 s")??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "GET /config answered {status}");
        Ok(serde_json::from_slice(&body)?)
    })
}

fn run_config(path: &Path, demo: bool) -> anyhow::Result<()> {
    let config = config::load(path)?;
    serve(config, Some(path.to_owned()), demo)
}

fn serve(config: Config, path: Option<std::path::PathBuf>, demo: bool) -> anyhow::Result<()> {
    init_logging(&config.log_level);
    let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (runtime, others) = ferroway::worker::start(workers).context("starting the workers")?;
    runtime.block_on(async move {
        // Handlers first: a stop signal that arrives while listeners start must still drain.
        let stop = stop_signal()?;
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .context("installing the SIGUSR1 handler")?;
        if demo {
            for (name, addr) in demo::BACKENDS {
                let addr = addr.parse().context("demo backend address")?;
                demo::start_backend(name, addr)
                    .await
                    .with_context(|| format!("starting demo backend {name} on {addr}"))?;
            }
        }
        let running = server::start_on_workers(&config, path, others).await?;
        reload_on_sighup(hup, running.control.clone());
        reopen_log_on_sigusr1(usr1, running.gateway.access_log.clone());
        // Held until the gateway stops: dropping it would end the watch.
        let _watch =
            if config.watch { running.control.watch_config().context("watching the config file")? } else { None };
        tracing::info!("ferroway running: {}", snapshot::summary(&config));
        if demo {
            println!("{}", demo::CURL_LINES);
        }
        stop.await;
        tracing::info!("shutting down: draining in-flight requests");
        let cut = running.shutdown().await;
        if cut > 0 {
            tracing::warn!(connections = cut, "shutdown timeout reached; cut open connections");
        }
        Ok(())
    })
}

/// SIGHUP reloads the config file; a failed reload is logged and changes nothing.
fn reload_on_sighup(mut hup: tokio::signal::unix::Signal, control: std::sync::Arc<server::Control>) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match control.reload_from_file().await {
                Ok(s) => tracing::info!(added = ?s.listeners_added, removed = ?s.listeners_removed, "config reloaded"),
                Err(e) => tracing::error!("reload failed; the running config keeps serving:\n{e}"),
            }
        }
    });
}

/// SIGUSR1 reopens the access-log file, so logrotate can move it away.
fn reopen_log_on_sigusr1(
    mut usr1: tokio::signal::unix::Signal,
    log: std::sync::Arc<ferroway::observe::access_log::AccessLog>,
) {
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            log.reopen();
            tracing::info!("access log reopened");
        }
    });
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future ends at the first signal.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The gateway's own logs go to stderr: readable on a terminal, one JSON object per line
/// otherwise (for log shippers). The level comes from `RUST_LOG`, else from `log_level`.
fn init_logging(level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let terminal = std::io::stderr().is_terminal();
    // log_internal_errors(false): by default a failed log write is reported with eprintln!,
    // which panics when stderr itself is gone; a gateway must outlive its log reader.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = if terminal { builder.try_init() } else { builder.json().flatten_event(true).try_init() };
}

/// jemalloc, measured against glibc's malloc and mimalloc in `bench/` (see Cargo.toml).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (`MALLOC_CONF`, here `_RJEM_MALLOC_CONF`,
/// still overrides them). Each size class of the thread cache holds at least 64 blocks, not
/// 20: a request's 4 KiB head buffers and its 8.5 KiB boxed state come in slabs of only a few,
/// and with 64 connections in flight their bins emptied and overflowed at every burst, each
/// time going through the arena (callgrind, 10 000 small requests over 64 connections: 45.3k
/// -> 43.1k instructions per request; 128 blocks was no better).
///
/// The thread cache's garbage collection (which hands cached blocks back to the arena) runs
/// every 4 MiB allocated rather than every 64 KiB: a small request allocates about 14 KiB, so
/// it ran every fifth request and cost each one 1.6k instructions under callgrind
/// (`bench/callgrind.sh`, 16 and 64 connections: 36.8k -> 35.3k; 16 MiB saved 0.2k more). What
/// the cache may hold is still bounded per size class, so this changes when, not how much.
///
/// Freed pages go back to the system within about a second (`dirty_decay_ms:1000`), by
/// jemalloc's own background thread (`background_thread:true`) rather than only in the course
/// of later allocations: without it a gateway that goes quiet after a burst, or whose idle
/// connections were parked (`keepalive_park_after`), kept every freed page for good (8 000
/// connections parked: 1.8 KiB of RSS each stayed, 0.3 KiB with it; bench/RESULTS.md).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"tcache_nslots_small_min:64,tcache_gc_incr_bytes:4194304,background_thread:true,dirty_decay_ms:1000\0"[0];

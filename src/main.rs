//! The `lanyard` binary: the daemon and its command-line client.

use clap::Parser;
use lanyard::cli::{note, run_client, Cli, CliError, Command, Endpoint};

/// `lanyard-ifup` / `lanyard-ifdown` symlinks stand for `lanyard qemu-ifup` /
/// `lanyard qemu-ifdown`, because QEMU's `script=` takes a path, no arguments.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name =
        args.first().map(std::path::Path::new).and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
    let sub = if name.ends_with("-ifup") {
        Some("qemu-ifup")
    } else if name.ends_with("-ifdown") {
        Some("qemu-ifdown")
    } else {
        None
    };
    if let Some(sub) = sub {
        args.insert(1, sub.into());
    }
    args
}

fn main() {
    let cli = match Cli::try_parse_from(args()) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, not clap's multi-line usage block, but with what
            // clap's other lines name (the missing arguments, its tips).
            let line = lanyard::cli::usage_error_line(&e.to_string());
            eprintln!("error: {line} (see `lanyard --help`)");
            std::process::exit(2);
        }
    };
    match cli.command {
        Command::Daemon {
            config,
            state_dir,
            socket_group,
            listen,
            metrics_listen,
            web_listen,
            tls_cert,
            tls_key,
            log_level,
            etcd,
            node,
            underlay,
        } => {
            // The configuration file under the flags: a flag (or its
            // environment variable) wins.
            let file = match config.as_deref().map(lanyard::daemon::config::load).transpose() {
                Ok(f) => f.unwrap_or_default(),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            };
            let from_flag = log_level.is_some();
            let state_dir =
                state_dir.or_else(|| file.state_dir.clone()).unwrap_or_else(|| lanyard::cli::DEFAULT_STATE_DIR.into());
            let log_level = log_level.or_else(|| file.log_level.clone()).unwrap_or_else(|| "info".into());
            let etcd = if etcd.is_empty() { file.etcd.clone().unwrap_or_default() } else { etcd };
            // Checked before anything starts: a wrong option changes nothing.
            let filter = match tracing_subscriber::EnvFilter::try_new(&log_level) {
                Ok(f) => f,
                Err(e) => {
                    let shown = lanyard::cli::printable(&log_level).into_owned();
                    eprintln!("error: invalid --log-level (or LANYARD_LOG) {shown:?}: {e}");
                    std::process::exit(2);
                }
            };
            let options = lanyard::daemon::Options::new(
                socket_group.or_else(|| file.socket_group.clone()),
                listen.or(file.listen),
                tls_cert.or_else(|| file.tls_cert.clone()),
                tls_key.or_else(|| file.tls_key.clone()),
            )
            .and_then(|o| {
                Ok(lanyard::daemon::Options {
                    cluster: lanyard::daemon::ClusterOptions::new(
                        etcd,
                        node.or_else(|| file.node.clone()),
                        underlay.or_else(|| file.underlay.clone()),
                    )?,
                    metrics_listen: metrics_listen.or(file.metrics_listen),
                    web_listen: web_listen.or(file.web_listen),
                    ..o
                })
            });
            let options = match options {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            };
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let (filter, log_filter) = tracing_subscriber::reload::Layer::new(filter);
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
                )
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            let result = rt.block_on(async {
                // A flag's log level stays; the file's follows reloads.
                let apply = move |level: &str| {
                    if from_flag {
                        return Ok(false);
                    }
                    let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                    log_filter.reload(f).map_err(|e| e.to_string())?;
                    Ok(true)
                };
                tokio::spawn(lanyard::daemon::config::reload_on_hangup(config, file, apply));
                lanyard::daemon::run(&cli.socket, &state_dir, &options).await
            });
            if let Err(e) = result {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        cmd => {
            match run_client(Endpoint { socket: cli.socket, token: cli.token, url: cli.url, ca: cli.ca }, cmd) {
                Ok(()) => {}
                // `lanyard ... | head`: the reader has all it wanted.
                Err(CliError::OutputClosed) => std::process::exit(0),
                Err(e) => {
                    // One line, whatever the daemon's message held.
                    note(&format!("error: {e}"));
                    std::process::exit(e.exit_code());
                }
            }
        }
    }
}

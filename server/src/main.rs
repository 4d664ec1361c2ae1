use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use rollcall_server::cli::{self, Command, LogFormat, ServeArgs};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let cli = cli::parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit());
    let result = match cli.command {
        Command::Token(args) => args
            .mint()
            .map(|token| println!("{token}"))
            .map_err(Into::into),
        Command::Serve(args) => serve_blocking(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A user error is a sentence, not a backtrace: print the cause chain only
            // (anyhow's Debug would add a backtrace whenever RUST_BACKTRACE is set).
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_blocking(args: &ServeArgs) -> anyhow::Result<()> {
    init_logs(args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

/// Text logs (coloured only when stderr is a terminal and `NO_COLOR` is unset) or one
/// JSON object per line.
fn init_logs(args: &ServeArgs) -> anyhow::Result<()> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log {:?} is not a valid log filter", args.log))?;
    if !args.log.contains("sled") {
        // sled logs a damaged `conf` as one from "a sled version earlier than 0.29";
        // the server's own error names the damaged file instead.
        filter = filter.add_directive(
            "sled::config=off"
                .parse()
                .context("the built-in log filter")?,
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = bind_any(&args.listen)?;
    let addr = listener.local_addr()?;
    if config.auth.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback without auth: anyone who can reach this port can read and write every room; use --auth-secret-file or --auth-public-key");
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    rollcall_server::run_notify(listener, config, shutdown_signal(), move |addr| {
        // Printed once the server is ready (the log replayed): scripts and tests read
        // this line to learn the port (e.g. with --listen 127.0.0.1:0).
        println!("rollcall listening on {scheme}://{addr}");
        let _ = std::io::stdout().flush();
    })
    .await
    .map_err(|error| match error {
        // Says what is wrong with the directory and what to do: one sentence, as is.
        error @ rollcall_server::Error::DataDirectory { .. } => anyhow::Error::new(error),
        error => anyhow::Error::new(error).context("the server stopped"),
    })
}

/// Binds the first address `listen` names that can be bound (a host name may resolve
/// to several; IPv4 first).
fn bind_any(listen: &str) -> anyhow::Result<TcpListener> {
    let mut last = None;
    for addr in cli::resolve_listen(listen)? {
        match bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some((addr, error)),
        }
    }
    match last {
        Some((addr, error)) => Err(error).with_context(|| format!("cannot listen on {addr}")),
        None => anyhow::bail!("--listen {listen} names no address"),
    }
}

/// Connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
/// `TcpListener::bind` uses 128: a reconnect storm of thousands of clients overflows
/// it, and every dropped SYN costs its client a 1 s, 3 s, 7 s... retransmit.
const LISTEN_BACKLOG: u32 = 8_192;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

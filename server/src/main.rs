use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser as _;
use rollcall_server::cli::{Cli, Command};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => {
            println!("{}", args.mint()?);
            Ok(())
        }
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(&args))
        }
    }
}

async fn serve(args: &rollcall_server::cli::ServeArgs) -> anyhow::Result<()> {
    let listener =
        bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = args.config()?;
    let addr = listener.local_addr()?;
    if config.auth.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback without auth: anyone who can reach this port can read and write every room; use --auth-secret-file or --auth-public-key");
    }
    // Scripts and tests read this line to learn the port (e.g. with --listen :0).
    println!("rollcall listening on http://{addr}");
    std::io::stdout().flush()?;
    rollcall_server::run(listener, config, shutdown_signal())
        .await
        .context("the server stopped with an error")
}

/// Connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
/// `TcpListener::bind` uses 128: a reconnect storm of thousands of clients overflows
/// it, and every dropped SYN costs its client a 1 s, 3 s, 7 s... retransmit.
const LISTEN_BACKLOG: u32 = 8_192;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
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

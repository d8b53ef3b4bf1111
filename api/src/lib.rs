//! `rkt api-service`: rkt's read-only v1alpha PublicAPI over gRPC (docs/api-service.md). Pods
//! come from the engine (`rkt_engine::pod`), images from the store (`rkt_store`); nothing is
//! changed. The wire format is rkt's `api/v1alpha/api.proto` (proto/v1alpha/api.proto here), so
//! clients generated from rkt's proto work unchanged.

mod access;
mod events;
mod images;
pub mod listen;
mod logs;
mod pods;
mod service;
mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Messages, the `PublicApi` server trait and the client, generated from proto/v1alpha/api.proto
/// at build time.
pub mod v1alpha {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("v1alpha");
}

/// rkt's default (`common.APIServiceListenAddr`).
pub const DEFAULT_LISTEN: &str = "localhost:15441";
/// The v1alpha API version rkt reported.
pub const API_VERSION: &str = "1.0.0-alpha";
/// Largest request accepted (filters included); bigger is RESOURCE_EXHAUSTED from gRPC.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// What the service was started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub system_config: PathBuf,
    pub local_config: PathBuf,
    pub user_config: String,
    pub insecure_options: String,
    /// `--trust-keys-from-https`, reported by GetInfo.
    pub trust_keys_from_https: bool,
    /// Reported by GetInfo.
    pub rkt_version: String,
    /// `--listen`; None: the sockets systemd passed, else [`DEFAULT_LISTEN`].
    pub listen: Option<String>,
    /// How often a ListenEvents stream looks for changes.
    pub events_interval: Duration,
}

/// Opens the sockets, serves until SIGINT or SIGTERM, then returns.
pub fn serve(opts: Options) -> Result<()> {
    let listeners = match (listen::activated()?, &opts.listen) {
        (Some(_), Some(_)) => {
            bail!("started with sockets from systemd (LISTEN_FDS), but --listen was given too")
        }
        (Some(l), None) => l,
        (None, addr) => listen::bind(addr.as_deref().unwrap_or(DEFAULT_LISTEN))?,
    };
    let names: Vec<String> = listeners.iter().map(listen::Listener::describe).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(opts, listeners, names))
}

async fn run(opts: Options, listeners: Vec<listen::Listener>, names: Vec<String>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    use tonic::transport::Server;
    use v1alpha::public_api_server::PublicApiServer;

    let svc = Arc::new(service::Service::new(opts));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for l in listeners {
        let api =
            PublicApiServer::from_arc(svc.clone()).max_decoding_message_size(MAX_REQUEST_BYTES);
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let router = Server::builder()
            .concurrency_limit_per_connection(32)
            .max_concurrent_streams(Some(128))
            .add_service(api);
        servers.push(match l {
            listen::Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
            listen::Listener::Unix(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::UnixListener::from_std(l)?;
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
        });
    }
    eprintln!("API service running on {}", names.join(", "));
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("API service exiting");
    let _ = stop_tx.send(true);
    for s in servers {
        // A stream that never ends (ListenEvents) must not keep the service up.
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    Ok(())
}

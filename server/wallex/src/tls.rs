//! HTTPS: the API over rustls, HTTP/1.1 and HTTP/2 (negotiated by ALPN), with the certificate and
//! key read again on SIGHUP, so a renewed certificate is served without a restart (connections
//! already open keep the one they began with). A reload that fails keeps the certificate in use.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

use crate::config::HttpConfig;

/// How long a stopping HTTPS server lets requests in progress finish.
const DRAIN: Duration = Duration::from_secs(10);

/// The certificate chain and key, checked now.
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| format!("reading the TLS certificate {} and key {}", cert.display(), key.display()))
}

/// Serves `app` over TLS on `listener` until `stop`, reloading the certificate on SIGHUP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    config: RustlsConfig,
    http: &HttpConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (cert, key) = (http.tls_cert.clone().expect("TLS is on"), http.tls_key.clone().expect("TLS is on"));
    tokio::spawn(reload_on_hangup(config.clone(), cert, key));
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        stop.await;
        stopping.graceful_shutdown(Some(DRAIN));
    });
    let listener = listener.into_std().context("the listener")?;
    axum_server::from_tcp_rustls(listener, config)
        .context("serving TLS")?
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .context("serving TLS")
}

#[cfg(unix)]
async fn reload_on_hangup(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("SIGHUP cannot be watched: the TLS certificate is not reloadable");
        return;
    };
    while hangups.recv().await.is_some() {
        match config.reload_from_pem_file(&cert, &key).await {
            Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
            Err(error) => {
                tracing::error!(%error, cert = %cert.display(), "TLS reload failed; serving the previous certificate")
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_config: RustlsConfig, _cert: PathBuf, _key: PathBuf) {}

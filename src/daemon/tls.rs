//! The optional TCP listener for remote clients (`--listen ADDR:PORT`):
//! TLS only (rustls with the `ring` provider; `--tls-cert`, `--tls-key`),
//! and every request needs a project's token ([`Transport::Tcp`]: a request
//! without one is refused, the admin exists only on the unix socket).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::Shared;
use crate::auth::Transport;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} {path}: {why}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// rustls refused the pair.
    #[error("the certificate {cert} and key {key} do not make a TLS server: {source}")]
    Config {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// Cause.
        source: rustls::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// `--listen` with its certificate and key.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Address and port.
    pub addr: SocketAddr,
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let pem = |what, path: &Path, why: String| TlsError::Pem { what, path: path.display().to_string(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("certificate", cert, "no CERTIFICATE block in it".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem("private key", key, e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
        .map_err(|source| TlsError::Config { cert: cert.display().to_string(), key: key.display().to_string(), source })
}

/// Binds the listener (so that a wrong address stops the daemon's start).
pub async fn bind(options: &ListenOptions) -> Result<(TcpListener, TlsAcceptor), TlsError> {
    let config = server_config(&options.cert, &options.key)?;
    let listener =
        TcpListener::bind(options.addr).await.map_err(|source| TlsError::Bind { addr: options.addr, source })?;
    Ok((listener, TlsAcceptor::from(Arc::new(config))))
}

/// Serves the API on `listener` until the task is aborted: each connection
/// on its own task, its handshake bounded by [`HANDSHAKE_TIMEOUT`], so a
/// slow or broken client holds up no one else.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Shared) {
    let app = crate::api::router_for(state, Transport::Tcp);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!("TLS listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, "TLS connection ended: {e}");
            }
        });
    }
}

//! Servers that answer only clients holding a certificate from one CA (mutual TLS): the node
//! agents' containerLogs endpoint (the API server's kubelet client certificate) and the
//! PostgreSQL instance manager's command API (the operator's certificate).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

/// PEM files: the server's certificate chain and key, and the CA its clients must be signed by.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// An axum listener that completes a mutual TLS handshake before handing a connection over;
/// a client without a certificate from the CA never reaches a handler.
pub struct MutualTlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl MutualTlsListener {
    pub fn new(tcp: tokio::net::TcpListener, files: &TlsFiles) -> Result<Self> {
        Ok(MutualTlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config(files)?)),
        })
    }
}

impl axum::serve::Listener for MutualTlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, address),
                Err(e) => warn!(%address, error = %e, "TLS handshake refused"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.client_ca)
        .with_context(|| format!("client CA {}", files.client_ca.display()))?
    {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("certificate {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("key {}", files.key.display()))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?)
}

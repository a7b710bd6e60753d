//! How Bulwark's own clients (the write probe, tests, benchmarks, DR drills) reach a database:
//! always over TLS, the server's certificate checked against the cluster's CA and the host name.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection configuration and the TLS it must use.
#[derive(Clone)]
pub struct Endpoint {
    pub config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Endpoint {
    /// `config` verified against the CA in `ca_pem`: the connection fails unless the server
    /// offers TLS with a certificate from that CA for the name in `config`'s host (connect to
    /// an address with `hostaddr`, keeping a certificate name as `host`).
    pub fn new(mut config: tokio_postgres::Config, ca_pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("the CA certificate")?)
                .context("the CA certificate")?;
        }
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        Ok(Endpoint {
            config,
            tls: trusting(roots),
        })
    }

    /// A Unix socket (`config`'s host is a path): it never leaves the machine, and PostgreSQL
    /// offers no TLS on it.
    pub fn unix_socket(mut config: tokio_postgres::Config) -> Self {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Endpoint {
            config,
            tls: trusting(rustls::RootCertStore::empty()),
        }
    }

    /// The same server name and credentials, connecting to `address` instead (one instance
    /// rather than a Service: every instance serves the cluster's one certificate).
    pub fn at(&self, address: std::net::IpAddr) -> Self {
        let mut config = tokio_postgres::Config::new();
        for host in self.config.get_hosts() {
            if let tokio_postgres::config::Host::Tcp(name) = host {
                config.host(name);
                config.hostaddr(address);
            }
        }
        for port in self.config.get_ports() {
            config.port(*port);
        }
        config
            .user(self.config.get_user().unwrap_or_default())
            .password(self.config.get_password().unwrap_or_default())
            .dbname(self.config.get_dbname().unwrap_or_default())
            .ssl_mode(self.config.get_ssl_mode());
        if let Some(timeout) = self.config.get_connect_timeout() {
            config.connect_timeout(*timeout);
        }
        Endpoint {
            config,
            tls: self.tls.clone(),
        }
    }

    /// A session; its connection runs on a task of its own until the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// How an application connects to a DatabaseCluster: through its `-rw` Service, with the
/// credentials and CA of its `-app` Secret, checking the certificate's name is the Service's.
/// The Service's cluster IP is dialled directly, so no cluster DNS is needed (the local test
/// bed's host has none).
pub async fn application(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
) -> Result<Endpoint> {
    use k8s_openapi::api::core::v1::{Secret, Service};
    let secret = kube::Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&format!("{cluster}-app"))
        .await?;
    let field = |key: &str| -> Result<String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .with_context(|| format!("Secret {cluster}-app has no {key}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    };
    let address = kube::Api::<Service>::namespaced(client.clone(), namespace)
        .get(&format!("{cluster}-rw"))
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .with_context(|| format!("Service {cluster}-rw has no cluster IP"))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(format!("{cluster}-rw.{namespace}.svc"))
        .hostaddr(address.parse()?)
        .port(5432)
        .user(field("username")?)
        .password(field("password")?)
        .dbname(field("dbname")?)
        .connect_timeout(std::time::Duration::from_secs(1));
    Endpoint::new(config, field("ca.crt")?.as_bytes())
}

fn trusting(roots: rustls::RootCertStore) -> MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(tls)
}

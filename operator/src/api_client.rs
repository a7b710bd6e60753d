//! The Kubernetes API client: kube's own stack but for its connection pool.

use std::time::Duration;

use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

/// How long a connection to the API server sits idle in the pool before it is closed: long enough
/// that work every few seconds (lease renewals, the resync sweep) keeps its connections. kube's
/// builder keeps one for 90 s, with its TLS and read buffers: a leader that had opened 80 during a
/// burst still held them a minute later, where the standby held 15.
const POOL_IDLE: Duration = Duration::from_secs(15);

/// kube's default stack (its rustls connector with the config's timeouts, base URI, retries of
/// 429/503/504, authentication, extra headers), whose builder does not expose the pool's idle
/// timeout. Tracing spans per request are left out. A proxy goes to kube's own builder, which
/// refuses it without the feature this build lacks.
pub fn client(config: kube::Config) -> kube::Result<kube::Client> {
    if config.proxy_url.is_some() {
        return kube::Client::try_from(config);
    }
    let mut connector = hyper_timeout::TimeoutConnector::new(config.rustls_https_connector()?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http = HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        // Without a timer the pool drops an expired connection only when it next looks for one.
        .pool_timer(TokioTimer::new())
        .build(connector);
    let retry = config
        .default_retry
        .then(|| RetryLayer::new(RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}

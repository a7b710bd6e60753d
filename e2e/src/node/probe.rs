//! Probes as the kubelet runs them: httpGet (2xx/3xx is success), tcpSocket (a connection), and
//! exec (exit 0, run inside the container by `bulwark-node enter`), each with its timeout.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// Timings with the kubelet's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: i32,
    pub failure_threshold: i32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Self {
        let seconds =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10),
            timeout: seconds(probe.timeout_seconds, 1),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
        }
    }
}

/// Counts consecutive results and says when the verdict flips (threshold crossings only).
#[derive(Debug, Default)]
pub struct Verdict {
    passing: Option<bool>,
    successes: i32,
    failures: i32,
}

impl Verdict {
    /// Records one result; returns the new verdict when it changes.
    pub fn record(&mut self, timing: &Timing, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let now = if self.successes >= timing.success_threshold {
            Some(true)
        } else if self.failures >= timing.failure_threshold {
            Some(false)
        } else {
            None
        };
        match now {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

fn port_number(port: &IntOrString, container: &Container) -> Result<u16> {
    match port {
        IntOrString::Int(n) => Ok(u16::try_from(*n)?),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u16)
            .with_context(|| format!("no container port named {name:?}")),
    }
}

/// Runs one probe against a container at `pod_ip`; `Err` carries the reason it failed.
pub async fn check(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    exec_target: Option<(i32, u32, u32)>,
    agent: &Path,
) -> Result<()> {
    let timeout = Timing::of(probe).timeout;
    if let Some(http) = &probe.http_get {
        let port = port_number(&http.port, container)?;
        let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let host = http.host.as_deref().unwrap_or(pod_ip);
        let url = format!(
            "{scheme}://{host}:{port}{}",
            http.path.as_deref().unwrap_or("/")
        );
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // The kubelet does not verify probe certificates.
            .tls_danger_accept_invalid_certs(true)
            .build()?;
        let mut request = client.get(&url);
        for header in http.http_headers.iter().flatten() {
            request = request.header(&header.name, &header.value);
        }
        let status = request
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .status();
        if !(200..400).contains(&status.as_u16()) {
            bail!("GET {url}: HTTP {status}");
        }
        return Ok(());
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_number(&tcp.port, container)?;
        let host = tcp.host.as_deref().unwrap_or(pod_ip);
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
            .await
            .with_context(|| format!("connecting to {host}:{port} timed out"))?
            .with_context(|| format!("connecting to {host}:{port}"))?;
        return Ok(());
    }
    if let Some(exec) = &probe.exec {
        let (pid, uid, gid) = exec_target.context("the container is not running")?;
        let mut command = tokio::process::Command::new(agent);
        command
            .args([
                "enter",
                &pid.to_string(),
                &uid.to_string(),
                &gid.to_string(),
                "--",
            ])
            .args(exec.command.iter().flatten())
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let output = tokio::time::timeout(timeout, command.output())
            .await
            .context("exec probe timed out")??;
        if !output.status.success() {
            bail!(
                "exec probe {:?} exited with {}: {}",
                exec.command.as_deref().unwrap_or_default(),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        return Ok(());
    }
    bail!("probe has no handler this node agent supports (httpGet, tcpSocket, exec)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_flip_only_at_the_thresholds() {
        let timing = Timing::of(&Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            ..Default::default()
        });
        let mut verdict = Verdict::default();
        assert_eq!(verdict.record(&timing, true), Some(true));
        assert_eq!(verdict.record(&timing, true), None);
        assert_eq!(verdict.record(&timing, false), None);
        assert_eq!(verdict.record(&timing, false), Some(false));
        assert_eq!(verdict.record(&timing, false), None);
        assert_eq!(verdict.record(&timing, true), Some(true));
    }
}

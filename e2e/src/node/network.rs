//! Pod networking on one host, routed point-to-point (as kind's kindnet does): every pod has a
//! veth whose host end carries a /32 route to the pod's IP; inside, the pod routes everything via
//! the gateway address, which lives on an empty bridge `bulwark0` in the host namespace. All
//! traffic between pods therefore crosses the host's IP stack, where kube-proxy's NAT and
//! NetworkPolicy rules see it. The API server listens on the gateway address.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Host-side anchor of the pod network: holds the gateway address.
pub const GATEWAY_LINK: &str = "bulwark0";
/// The gateway (and node InternalIP, and API server address) pods see.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Every pod address is in here; node `i` gets `10.244.(i+1).0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Host ends of pod veths are named with this prefix, so a sweep can find leftovers.
pub const VETH_PREFIX: &str = "bwk";

pub fn pod_cidr(node_index: usize) -> String {
    format!("10.244.{}.0/24", node_index + 1)
}

/// Runs `ip -batch -` with `commands`, optionally inside the network namespace of `pid`.
fn ip_batch(netns_of: Option<u32>, commands: &[String]) -> Result<()> {
    let mut command = match netns_of {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net")).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (Debian package iproute2)")?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.join("\n").as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "ip {:?}: {}",
            commands,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
        .with_context(|| format!("sysctl {key}={value}"))
}

/// Creates the gateway link (once per host run) and turns on forwarding.
pub fn create_gateway() -> Result<()> {
    if link_exists(GATEWAY_LINK) {
        remove_link(GATEWAY_LINK);
    }
    ip_batch(
        None,
        &[
            format!("link add {GATEWAY_LINK} type bridge"),
            format!("addr add {GATEWAY}/32 dev {GATEWAY_LINK}"),
            format!("link set {GATEWAY_LINK} up"),
        ],
    )?;
    sysctl("net.ipv4.ip_forward", "1")
}

pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

pub fn remove_link(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Host links a previous run left behind (gateway and pod veths whose sandbox is gone).
pub fn leftover_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n == GATEWAY_LINK || n.starts_with(VETH_PREFIX))
        .collect()
}

/// The host end's name for a pod: short (IFNAMSIZ is 16) and stable per pod UID.
pub fn veth_name(pod_uid: &str) -> String {
    let compact: String = pod_uid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(12)
        .collect();
    format!("{VETH_PREFIX}{compact}")
}

/// Wires the sandbox `pid` to the host with `ip`: veth, host route, address and default route.
pub fn attach(pid: u32, veth: &str, ip: Ipv4Addr) -> Result<()> {
    ip_batch(
        None,
        &[
            format!("link add {veth} type veth peer name eth0 netns {pid}"),
            format!("link set {veth} up"),
            format!("route add {ip}/32 dev {veth} src {GATEWAY}"),
        ],
    )?;
    ip_batch(
        Some(pid),
        &[
            format!("addr add {ip}/32 dev eth0"),
            "link set eth0 up".into(),
            format!("route add {GATEWAY} dev eth0 scope link"),
            format!("route add default via {GATEWAY} dev eth0 src {ip}"),
        ],
    )
}

/// Free addresses of a node's /24, lowest first (.1 is never used: the gateway is outside).
pub fn allocate(pod_cidr: &str, used: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    let base: Ipv4Addr = pod_cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("bad pod CIDR {pod_cidr}"))?;
    let [a, b, c, _] = base.octets();
    (2..=254)
        .map(|d| Ipv4Addr::new(a, b, c, d))
        .find(|ip| !used.contains(ip))
        .with_context(|| format!("pod CIDR {pod_cidr} is full"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_reused_lowest_first_and_names_fit_ifnamsiz() {
        let used = [Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 4)];
        assert_eq!(
            allocate("10.244.1.0/24", &used).unwrap(),
            Ipv4Addr::new(10, 244, 1, 3)
        );
        let name = veth_name("0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        assert!(name.len() <= 15, "{name}");
        assert_eq!(name, "bwk0a1b2c3d4e5f");
    }
}

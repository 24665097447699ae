//! `run`'s containers on the node's local bridge (Docker's default `bridge` network):
//! each gets a network namespace pinned at `<data>/netns/c-<id>`, one interface `eth0`
//! on `sw-gw` at an address of the node's own (drawn from the same directory as tasks'
//! ways out), its default route through the bridge and NAT beyond it. Its
//! `/etc/resolv.conf` is the host's without loopback servers (they would be the
//! container's own loopback), as under Docker; its `/etc/hosts` names it.
//!
//! Made before the container's first start and again before a start after a reboot
//! (the pin does not survive one); kept while the container exists, across its
//! restarts and the daemon's; removed with it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::netplane::{bridge_addr, ensure_bridge, read_addr, write_hosts};
use crate::net::bridge;
use crate::net::netns;
use crate::net::rtnl::Rtnl;

/// A container's wiring, as its runtime spec joins it.
#[derive(Debug)]
pub struct Bridged {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub addr: Ipv4Addr,
}

fn key(id: &str) -> String {
    format!("c-{id}")
}

/// The container's address on the bridge, if it has one.
pub fn addr(dir: &Path, id: &str) -> Option<Ipv4Addr> {
    read_addr(&dir.join(format!("{}.gw", key(id))))
}

/// Wires container `id` (idempotent: a pinned namespace is taken as wired). On
/// failure nothing of it is left.
pub fn wire(dir: &Path, id: &str, hostname: &str) -> Result<Bridged, String> {
    let k = key(id);
    let netns = dir.join(&k);
    let b = Bridged {
        resolv_conf: dir.join(format!("{k}.resolv.conf")),
        hosts: dir.join(format!("{k}.hosts")),
        addr: bridge_addr(dir, &k)?,
        netns,
    };
    let files = || -> Result<(), String> {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        write(&b.resolv_conf, &resolv_conf(&host))?;
        write_hosts(&b.hosts, b.addr, Some(hostname))
    };
    if netns::is_pinned(&b.netns) {
        files()?;
        return Ok(b);
    }
    let made = (|| {
        netns::create(&b.netns).map_err(|e| e.to_string())?;
        let mut rtnl = Rtnl::open().map_err(|e| e.to_string())?;
        ensure_bridge(&mut rtnl)?;
        let path = b.netns.display().to_string();
        bridge::attach(&mut rtnl, &path, "eth0", b.addr)
            .map_err(|e| format!("{}: {e}", bridge::BRIDGE))?;
        files()
    })();
    match made {
        Ok(()) => Ok(b),
        Err(e) => {
            unwire(dir, id);
            Err(format!("network bridge: {e}"))
        }
    }
}

/// Removes container `id`'s wiring; what is already gone is not an error, what cannot
/// be removed is logged.
pub fn unwire(dir: &Path, id: &str) {
    let k = key(id);
    if let Some(ip) = addr(dir, id) {
        match Rtnl::open() {
            Ok(mut rtnl) => {
                if let Err(e) = bridge::detach(&mut rtnl, ip) {
                    warning!("container {}: {e}", short(id));
                }
            }
            Err(e) => warning!("container {}: {e}", short(id)),
        }
    }
    if let Err(e) = netns::remove(&dir.join(&k)) {
        warning!("container {}: {e}", short(id));
    }
    for ext in ["resolv.conf", "hosts", "gw"] {
        let _ = std::fs::remove_file(dir.join(format!("{k}.{ext}")));
    }
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The host's resolv.conf as a bridged container gets it: nameservers on loopback
/// dropped (inside the container they would be its own loopback), the rest kept.
fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("nameserver") {
            let loopback = f
                .next()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .is_some_and(|a| a.is_loopback());
            if loopback {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_are_dropped_and_the_rest_kept() {
        let host = "# made by hand\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch lan\noptions edns0\n";
        assert_eq!(
            resolv_conf(host),
            "# made by hand\nnameserver 10.0.0.2\nsearch lan\noptions edns0\n"
        );
    }
}

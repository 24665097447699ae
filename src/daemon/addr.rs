//! Which address a node advertises when the user names none and it listens on every
//! interface (the default, `0.0.0.0:2377`).
//!
//! - `join`: the address this host's routing table picks as the source toward the manager
//!   given on the command line: by definition one the manager can answer. A connected
//!   UDP socket asks the kernel; no packet is sent.
//! - `init`: the only IPv4 address of the host's interfaces (loopback and link-local left
//!   out); with several, the one on the interface that holds the default route; with
//!   several and no such tie-breaker, an error naming each candidate, because advertising
//!   the wrong one would make the cluster unreachable in a way that is hard to see later.
//!   Docker Swarm refuses the same way.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// The source address this host uses to reach `dest`.
pub fn toward(dest: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(dest)?;
    Ok(s.local_addr()?.ip())
}

/// The address to advertise for `init`, from the host's interfaces.
pub fn for_init() -> Result<IpAddr, String> {
    let mut found = Vec::new();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing interfaces: {e}"))?;
    for a in addrs {
        let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            if up {
                found.push((a.interface_name.clone(), sin.ip()));
            }
        }
    }
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    choose(&found, default_route_interface(&route).as_deref())
}

/// The interface of the IPv4 default route in `/proc/net/route`'s text, if one has it.
fn default_route_interface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace();
        let iface = f.next()?;
        let dest = f.next()?;
        let _gateway = f.next()?;
        let _flags = f.next()?;
        let mask = f.nth(3)?; // RefCnt, Use, Metric, then Mask
        (dest == "00000000" && mask == "00000000").then(|| iface.to_string())
    })
}

/// The rule in the module comment, over (interface, address) pairs.
fn choose(found: &[(String, Ipv4Addr)], default_if: Option<&str>) -> Result<IpAddr, String> {
    let usable: Vec<&(String, Ipv4Addr)> = found
        .iter()
        .filter(|(_, ip)| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
        .collect();
    match usable.as_slice() {
        [] => Err("this host has no IPv4 address other nets can reach".into()),
        [(_, ip)] => Ok(IpAddr::V4(*ip)),
        many => {
            if let Some(dif) = default_if {
                let on_default: Vec<_> = many.iter().filter(|(i, _)| i == dif).collect();
                if let [(_, ip)] = on_default.as_slice() {
                    return Ok(IpAddr::V4(*ip));
                }
            }
            let list: Vec<String> = many.iter().map(|(i, ip)| format!("{ip} on {i}")).collect();
            Err(format!(
                "this host has several addresses ({}) and none is clearly the one to use",
                list.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, [u8; 4])]) -> Vec<(String, Ipv4Addr)> {
        p.iter()
            .map(|(i, a)| ((*i).to_string(), Ipv4Addr::from(*a)))
            .collect()
    }

    #[test]
    fn one_address_besides_loopback_is_the_one() {
        let f = pairs(&[("lo", [127, 0, 0, 1]), ("eth0", [10, 79, 0, 1])]);
        assert_eq!(choose(&f, None), Ok(IpAddr::from([10, 79, 0, 1])));
        let f = pairs(&[
            ("lo", [127, 0, 0, 1]),
            ("eth0", [169, 254, 3, 4]),
            ("wlan0", [192, 168, 1, 9]),
        ]);
        assert_eq!(
            choose(&f, None),
            Ok(IpAddr::from([192, 168, 1, 9])),
            "link-local left out"
        );
    }

    #[test]
    fn several_are_settled_by_the_default_route_or_refused() {
        let f = pairs(&[("eth0", [192, 168, 1, 5]), ("wlan0", [192, 168, 2, 7])]);
        assert_eq!(
            choose(&f, Some("wlan0")),
            Ok(IpAddr::from([192, 168, 2, 7]))
        );
        let e = choose(&f, None).unwrap_err();
        assert!(
            e.contains("192.168.1.5 on eth0") && e.contains("192.168.2.7 on wlan0"),
            "{e}"
        );
        // Two addresses on the default route's interface: still ambiguous.
        let f = pairs(&[("eth0", [192, 168, 1, 5]), ("eth0", [192, 168, 1, 6])]);
        assert!(choose(&f, Some("eth0")).is_err());
        assert!(choose(&pairs(&[("lo", [127, 0, 0, 1])]), None).is_err());
    }

    #[test]
    fn the_default_route_is_read_from_proc_net_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("wlan0"));
        assert_eq!(
            default_route_interface(&table[..table.find("wlan0").unwrap()]),
            None
        );
        assert_eq!(default_route_interface("garbage\nshort line\n"), None);
    }

    #[test]
    fn toward_loopback_is_loopback() {
        assert_eq!(
            toward("127.0.0.1:2377".parse().unwrap()).unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}

//! Which names a container's embedded DNS server answers, and with what: pure, built
//! from the cluster state by the caller and swapped whole when it changes.
//!
//! A container sees the services of the networks it is on, and only those (a service
//! on another network is as unknown to it as to the outside world):
//! - `<service>`: the service's VIP on that network, or, for `--endpoint-mode dnsrr`,
//!   the addresses of its running tasks;
//! - `tasks.<service>`: the addresses of its running tasks;
//! - `<service>.<slot>.<task id>` (a task's container name): that task's address.
//!
//! Names are matched without regard to case and without the trailing dot. A name with
//! no dot, or one under `tasks.`, that no service has is answered "no such name" at
//! once: the world's resolvers cannot know it either, and asking them costs the client
//! a timeout when the node has no way out (Docker forwards these; we answer them). Any
//! other name is forwarded to the host's resolvers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// One service as a network's DNS sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceNames {
    /// The VIP on this network; `None` for dnsrr.
    pub vip: Option<Ipv4Addr>,
    /// Running tasks: container name (`web.1.x3k...`) and address, in slot order.
    pub tasks: Vec<(String, Ipv4Addr)>,
}

/// The names of one network: service name -> its records.
pub type NetworkNames = BTreeMap<String, ServiceNames>;

/// What a name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Ours: these addresses (possibly none: the name exists with no running task).
    Addrs(Vec<Ipv4Addr>),
    /// Ours to know, and nobody has it.
    NoSuchName,
    /// Not ours: ask the host's resolvers.
    Forward,
}

/// Resolves `name` (lowercase, no trailing dot) for a container on `networks`.
pub fn resolve<'a>(
    networks: impl IntoIterator<Item = &'a NetworkNames> + Clone,
    name: &str,
) -> Answer {
    let services = || networks.clone().into_iter();
    if let Some(svc) = name.strip_prefix("tasks.") {
        let mut addrs = Vec::new();
        let mut known = false;
        for n in services() {
            if let Some(s) = n.get(svc) {
                known = true;
                addrs.extend(s.tasks.iter().map(|(_, ip)| *ip));
            }
        }
        return match known {
            true => Answer::Addrs(addrs),
            false => Answer::NoSuchName,
        };
    }
    let mut addrs = Vec::new();
    let mut known = false;
    for n in services() {
        if let Some(s) = n.get(name) {
            known = true;
            match s.vip {
                Some(vip) => addrs.push(vip),
                None => addrs.extend(s.tasks.iter().map(|(_, ip)| *ip)),
            }
        }
    }
    if known {
        return Answer::Addrs(addrs);
    }
    // A task's container name: `<service>.<slot>.<id>` (or `<service>.<node>.<id>`).
    if let Some((svc, _)) = name.split_once('.') {
        for n in services() {
            if let Some((_, ip)) = n
                .get(svc)
                .and_then(|s| s.tasks.iter().find(|(t, _)| t == name))
            {
                return Answer::Addrs(vec![*ip]);
            }
        }
        return Answer::Forward;
    }
    Answer::NoSuchName
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, d)
    }

    fn names() -> (NetworkNames, NetworkNames) {
        let mut a = NetworkNames::new();
        a.insert(
            "test".into(),
            ServiceNames {
                vip: Some(ip(2)),
                tasks: vec![("test.1.aaa".into(), ip(3)), ("test.2.bbb".into(), ip(4))],
            },
        );
        a.insert(
            "rr".into(),
            ServiceNames {
                vip: None,
                tasks: vec![("rr.1.ccc".into(), ip(5))],
            },
        );
        a.insert(
            "idle".into(),
            ServiceNames {
                vip: Some(ip(6)),
                tasks: vec![],
            },
        );
        let mut b = NetworkNames::new();
        b.insert(
            "db".into(),
            ServiceNames {
                vip: Some(Ipv4Addr::new(10, 0, 2, 2)),
                tasks: vec![],
            },
        );
        (a, b)
    }

    #[test]
    fn services_tasks_and_task_names_resolve_on_the_containers_networks_only() {
        let (a, b) = names();
        let on_a = [&a];
        assert_eq!(resolve(on_a, "test"), Answer::Addrs(vec![ip(2)]));
        assert_eq!(
            resolve(on_a, "tasks.test"),
            Answer::Addrs(vec![ip(3), ip(4)])
        );
        assert_eq!(
            resolve(on_a, "rr"),
            Answer::Addrs(vec![ip(5)]),
            "dnsrr: the tasks"
        );
        assert_eq!(resolve(on_a, "test.2.bbb"), Answer::Addrs(vec![ip(4)]));
        assert_eq!(resolve(on_a, "idle"), Answer::Addrs(vec![ip(6)]));
        assert_eq!(resolve(on_a, "tasks.idle"), Answer::Addrs(vec![]));
        // Another network's service is unknown here, and known where it is.
        assert_eq!(resolve(on_a, "db"), Answer::NoSuchName);
        assert_eq!(resolve(on_a, "tasks.db"), Answer::NoSuchName);
        assert_eq!(
            resolve([&a, &b], "db"),
            Answer::Addrs(vec![Ipv4Addr::new(10, 0, 2, 2)])
        );
    }

    #[test]
    fn the_rest_of_the_world_is_forwarded() {
        let (a, _) = names();
        assert_eq!(resolve([&a], "deb.debian.org"), Answer::Forward);
        assert_eq!(resolve([&a], "test.example.com"), Answer::Forward);
        assert_eq!(resolve([&a], "nosuchservice"), Answer::NoSuchName);
        assert_eq!(
            resolve(std::iter::empty::<&NetworkNames>(), "test"),
            Answer::NoSuchName
        );
    }
}

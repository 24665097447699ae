//! Docker Swarm's side of the services benchmark: one manager dockerd and two workers,
//! each in its own network namespace on a bridge with no uplink, pulling the test image
//! from the registry in the hub namespace (`--insecure-registry`). Driven through
//! Debian's docker CLI the way a user drives it. Each dockerd runs with its own roots
//! and socket and without touching netfilter (`peer/docker_swarm.rs`); dropping the
//! cluster kills the containers, the daemons and the namespaces.

use std::process::Command;

use crate::docker_swarm::Dockerd;
use crate::support::{wait_until, Net};
use crate::Swarm;

pub struct DockerCluster {
    nodes: Vec<Dockerd>,
    net: Net,
    image: String,
}

/// Whether Debian's docker.io is there to measure.
pub fn available() -> bool {
    Command::new("dockerd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl DockerCluster {
    /// Three dockerds in namespaces of `net` (whose hub serves the registry at
    /// `registry`), a swarm of one manager and two workers, the image pulled on each.
    pub fn start(mut net: Net, registry: &str, image: &str) -> DockerCluster {
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let ip = format!("10.76.0.{i}");
            let ns = net.host(i, &ip);
            nodes.push(Dockerd::with_args(
                &ns,
                &format!("s{i}"),
                &ip,
                &["--insecure-registry", registry],
            ));
        }
        let c = DockerCluster {
            nodes,
            net,
            image: image.to_string(),
        };
        let m = &c.nodes[0];
        let (ok, out) = m.docker(&["swarm", "init", "--advertise-addr", &m.ip]);
        assert!(ok, "docker swarm init: {out}");
        let token = m.docker(&["swarm", "join-token", "-q", "worker"]).1;
        let first = format!("{}:2377", m.ip);
        for w in &c.nodes[1..] {
            let (ok, out) = w.docker(&["swarm", "join", "--token", token.trim(), &first]);
            assert!(ok, "docker swarm join: {out}");
        }
        let mut c = c;
        for d in &mut c.nodes {
            d.id = d
                .docker(&["info", "-f", "{{.Swarm.NodeID}}"])
                .1
                .trim()
                .to_string();
        }
        wait_until(60, "docker swarm of 3 ready", || c.ready());
        for d in &c.nodes {
            let (ok, out) = d.docker(&["pull", "-q", image]);
            assert!(ok, "docker pull {image}: {out}");
        }
        c
    }

    fn manager(&self) -> &Dockerd {
        &self.nodes[0]
    }
}

/// The JSON objects of a `--format '{{json .}}'` listing.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Swarm for DockerCluster {
    fn name(&self) -> &'static str {
        "docker_swarm"
    }

    fn create(&self, service: &str, replicas: usize, detach: bool) {
        let n = replicas.to_string();
        let mut args = vec![
            "service",
            "create",
            "--name",
            service,
            "--replicas",
            &n,
            "--stop-grace-period",
            "1s",
        ];
        if detach {
            args.push("-d");
        }
        args.extend([self.image.as_str(), "sleep", "86400"]);
        let (ok, out) = self.manager().docker(&args);
        assert!(ok, "docker service create {service}: {out}");
    }

    fn running(&self, service: &str) -> Vec<usize> {
        let out = self
            .manager()
            .docker(&[
                "service",
                "ps",
                "--no-resolve",
                "--no-trunc",
                "-f",
                "desired-state=running",
                "--format",
                "{{json .}}",
                service,
            ])
            .1;
        json_lines(&out)
            .iter()
            .filter(|o| {
                o["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .filter_map(|o| {
                let node = o["Node"].as_str()?;
                self.nodes.iter().position(|d| d.id == node)
            })
            .collect()
    }

    fn replicas(&self) -> Vec<(String, String)> {
        let out = self
            .manager()
            .docker(&["service", "ls", "--format", "{{json .}}"])
            .1;
        json_lines(&out)
            .iter()
            .map(|o| {
                let s = |k: &str| o[k].as_str().unwrap_or_default().to_string();
                (s("Name"), s("Replicas"))
            })
            .collect()
    }

    fn rm(&self, services: &[&str]) {
        let mut args = vec!["service", "rm"];
        args.extend(services);
        let (ok, out) = self.manager().docker(&args);
        assert!(ok, "docker service rm: {out}");
    }

    fn containers(&self, service: &str) -> usize {
        let label = format!("label=com.docker.swarm.service.name={service}");
        self.nodes
            .iter()
            .map(|d| d.docker(&["ps", "-q", "-f", &label]).1.lines().count())
            .sum()
    }

    fn set_link(&self, node: usize, up: bool) {
        self.net.set_link(node + 1, up);
    }

    fn ready(&self) -> bool {
        let out = self
            .manager()
            .docker(&["node", "ls", "--format", "{{.Status}}"])
            .1;
        out.lines().filter(|l| l.trim() == "Ready").count() == self.nodes.len()
    }

    fn down(&self, node: usize) -> bool {
        let out = self
            .manager()
            .docker(&["node", "ls", "--format", "{{.ID}} {{.Status}}"])
            .1;
        let id = &self.nodes[node].id;
        out.lines()
            .any(|l| l.split_whitespace().eq([id.as_str(), "Down"]))
    }

    fn daemon_pid(&self, node: usize) -> u32 {
        self.nodes[node].child.as_ref().unwrap().id()
    }

    fn node_pids(&self, node: usize) -> Vec<u32> {
        self.nodes[node].pids()
    }
}

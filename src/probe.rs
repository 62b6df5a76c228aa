//! What one probe round trip says about a host, and which plan conditions
//! hold given it. Pure: the executor runs the probe line and hands the text
//! here.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::Condition;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerState {
    Missing,
    Stopped,
    Running(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub spec: String,
    /// Secret name -> digest, from the container's secrets label.
    pub secrets: BTreeMap<String, String>,
}

/// `NAME:DIGEST,...` as [`crate::commands::run`] writes the label.
pub fn parse_secrets_label(label: &str) -> BTreeMap<String, String> {
    label
        .split(',')
        .filter_map(|item| item.split_once(':'))
        .map(|(n, d)| (n.trim().to_string(), d.trim().to_string()))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub docker: DockerState,
    pub images: BTreeSet<String>,
    pub containers: BTreeMap<String, ContainerState>,
    pub networks: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    /// The firewall marker found in the project's chain, if it is hooked.
    pub firewall: Option<String>,
    /// Version of the live files installed per service.
    pub config: BTreeMap<String, String>,
    /// Base images present on the host.
    pub bases: BTreeSet<String>,
    /// Images the host recently failed to pull, with the time (epoch s).
    pub unpullable: BTreeMap<String, u64>,
    /// The host's clock (epoch s), to judge `unpullable` ages.
    pub now: u64,
    /// Where it stands in a swarm (asked only of a swarm's nodes).
    pub swarm: SwarmState,
}

/// A node's view of its swarm.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SwarmState {
    /// `active` once it is a node; `inactive`, `pending`, `error`, `locked`.
    pub state: String,
    /// It is a manager (it answers for the swarm).
    pub manager: bool,
    /// `ADDR:PORT` of the managers it knows.
    pub managers: Vec<String>,
    /// On a manager: every node of the swarm.
    pub nodes: Vec<SwarmNode>,
    /// On a manager: the project's stack services and their spec labels.
    pub services: BTreeMap<String, String>,
    /// On a manager: `secret NAME` / `config NAME` of the swarm.
    pub objects: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    /// The address the swarm sees it at (a manager's own address when
    /// Docker reports 0.0.0.0).
    pub addr: String,
    /// `ready`, `down`, ...
    pub state: String,
    /// Its `provision.host` label.
    pub label: String,
}

impl SwarmState {
    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

impl HostState {
    /// Parse the output of [`crate::commands::probe`].
    pub fn parse(text: &str) -> HostState {
        let mut s = HostState {
            docker: DockerState::Missing,
            images: BTreeSet::new(),
            containers: BTreeMap::new(),
            networks: BTreeSet::new(),
            volumes: BTreeSet::new(),
            firewall: None,
            config: BTreeMap::new(),
            bases: BTreeSet::new(),
            unpullable: BTreeMap::new(),
            now: 0,
            swarm: SwarmState::default(),
        };
        let mut section = "";
        let mut marker = None;
        let mut hooked = false;
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("@docker ") {
                s.docker = match rest {
                    "missing" => DockerState::Missing,
                    "stopped" => DockerState::Stopped,
                    v => DockerState::Running(v.to_string()),
                };
                continue;
            }
            if let Some(rest) = line.strip_prefix("@swarm ") {
                let mut w = rest.split_whitespace();
                s.swarm.state = w.next().unwrap_or_default().to_string();
                s.swarm.manager = w.next() == Some("true");
                section = "";
                continue;
            }
            if let Some(now) = line.strip_prefix("@now ") {
                s.now = now.trim().parse().unwrap_or(0);
                continue;
            }
            if let Some(name) = line.strip_prefix('@') {
                section = match name {
                    "images" | "containers" | "networks" | "volumes" | "firewall" | "bases"
                    | "unpullable" | "config" | "swarm-managers" | "swarm-nodes"
                    | "swarm-services" | "swarm-objects" => name,
                    _ => "",
                };
                continue;
            }
            if line.is_empty() {
                continue;
            }
            match section {
                "images" => {
                    s.images.insert(line.to_string());
                }
                "containers" => {
                    let mut parts = line.split('\t');
                    let (Some(name), Some(state)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    let spec = parts.next().unwrap_or("").to_string();
                    let secrets = parse_secrets_label(parts.next().unwrap_or(""));
                    s.containers.insert(
                        name.to_string(),
                        ContainerState {
                            running: state == "running",
                            spec,
                            secrets,
                        },
                    );
                }
                "networks" => {
                    s.networks.insert(line.to_string());
                }
                "volumes" => {
                    s.volumes.insert(line.to_string());
                }
                "firewall" => {
                    if let Some(m) = line.strip_prefix("provision ") {
                        marker = Some(m.to_string());
                    } else if line == "hooked" {
                        hooked = true;
                    }
                }
                "bases" => {
                    s.bases.insert(line.to_string());
                }
                "swarm-managers" => s.swarm.managers.push(line.trim().to_string()),
                "swarm-nodes" => {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    if w.len() >= 4 {
                        // A manager may report 0.0.0.0 as its status
                        // address; its manager address is right.
                        let addr = if w[1] == "0.0.0.0" && w[3] != "-" {
                            w[3].rsplit_once(':').map(|(a, _)| a).unwrap_or(w[3])
                        } else {
                            w[1]
                        };
                        s.swarm.nodes.push(SwarmNode {
                            id: w[0].to_string(),
                            addr: addr.to_string(),
                            state: w[2].to_string(),
                            label: w.get(4).unwrap_or(&"").to_string(),
                        });
                    }
                }
                "swarm-services" => {
                    let mut w = line.split_whitespace();
                    if let Some(name) = w.next() {
                        s.swarm
                            .services
                            .insert(name.to_string(), w.next().unwrap_or_default().to_string());
                    }
                }
                "swarm-objects" => {
                    s.swarm.objects.insert(line.trim().to_string());
                }
                "config" => {
                    if let Some((service, version)) = line.split_once(' ') {
                        s.config.insert(service.to_string(), version.to_string());
                    }
                }
                "unpullable" => {
                    if let Some((image, when)) = line.rsplit_once(' ') {
                        if let Ok(when) = when.parse() {
                            s.unpullable.insert(image.to_string(), when);
                        }
                    }
                }
                _ => {}
            }
        }
        if hooked {
            s.firewall = marker;
        }
        s
    }

    /// A host with nothing on it yet (Docker missing): every condition holds.
    pub fn blank() -> HostState {
        HostState::parse("@docker missing")
    }

    /// The host failed to pull `image` less than `within` seconds ago: do
    /// not try again in this run (a no-op run stays quick on hosts without
    /// registry access).
    pub fn recently_unpullable(&self, image: &str, within: u64) -> Option<u64> {
        let when = *self.unpullable.get(image)?;
        (self.now.saturating_sub(when) < within).then_some(when)
    }

    pub fn docker_running(&self) -> bool {
        matches!(self.docker, DockerState::Running(_))
    }

    /// Whether a step with this condition has work to do.
    pub fn holds(&self, c: &Condition) -> bool {
        match c {
            Condition::DockerNotRunning => !self.docker_running(),
            Condition::NetworkMissing { name } => !self.networks.contains(name),
            Condition::VolumeMissing { name } => !self.volumes.contains(name),
            Condition::ContainerMissing { name } => !self.containers.contains_key(name),
            Condition::FirewallDiffers { marker } => self.firewall.as_ref() != Some(marker),
            Condition::ConfigDiffers { service, hash } => self.config.get(service) != Some(hash),
            Condition::ImageMissing { tag } => !self.images.contains(tag),
            Condition::ContainerOutdated { name, spec, .. } => match self.containers.get(name) {
                Some(c) => !c.running || &c.spec != spec,
                None => true,
            },
            Condition::Always => true,
            Condition::SwarmInactive => !self.swarm.active(),
            Condition::SwarmOutside { manager } => {
                !self.swarm.active() || !self.swarm.managers.iter().any(|m| m == manager)
            }
            Condition::NodesDiffer { expected } => self.nodes_differ(expected),
            Condition::SwarmObjectMissing { kind, name } => {
                !self.swarm.objects.contains(&format!("{kind} {name}"))
            }
            Condition::ServiceOutdated { name, spec } => {
                self.swarm.services.get(name) != Some(spec)
            }
        }
    }

    /// The swarm's nodes are not each host once, ready and labelled with its
    /// name, or a node is left that no host is (replaced, or gone from
    /// hosts.toml and down).
    fn nodes_differ(&self, expected: &BTreeMap<String, String>) -> bool {
        let nodes = &self.swarm.nodes;
        let labelled = expected.iter().all(|(addr, name)| {
            nodes
                .iter()
                .any(|n| &n.addr == addr && n.state == "ready" && &n.label == name)
        });
        let stale = nodes.iter().any(|n| {
            n.state != "ready"
                && (!expected.contains_key(&n.addr)
                    || nodes
                        .iter()
                        .any(|o| o.id != n.id && o.addr == n.addr && o.state == "ready"))
        });
        !labelled || stale
    }

    /// An existing container with the right spec that is merely stopped can
    /// be started instead of recreated.
    pub fn only_stopped(&self, c: &Condition) -> bool {
        match c {
            Condition::ContainerOutdated { name, spec, .. } => {
                matches!(self.containers.get(name), Some(s) if !s.running && &s.spec == spec)
            }
            _ => false,
        }
    }

    /// The secrets a Run step changes in a container that exists: their
    /// digest differs from the one its label recorded. A secret the label
    /// does not name (new, or a container made before labels) is not
    /// counted: nothing says it changed.
    pub fn rotated(&self, c: &Condition) -> Vec<String> {
        let Condition::ContainerOutdated { name, secrets, .. } = c else {
            return Vec::new();
        };
        let Some(found) = self.containers.get(name) else {
            return Vec::new();
        };
        secrets
            .iter()
            .filter(|(n, d)| found.secrets.get(*n).is_some_and(|old| old != *d))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "@docker 20.10.24\n@images\np-redis:abc\n@containers\np-redis\trunning\tspec1\np-pg\texited\tspec2\tPG_PASSWORD:aaaa,OTHER:bbbb\n@networks\np\n@volumes\npgdata\n@firewall\nprovision f00d\nhooked\n@bases\ndebian:bookworm\n@unpullable\nfluent/fluentd:v1 1000\n@now 1100\n";

    #[test]
    fn parses_every_section() {
        let s = HostState::parse(SAMPLE);
        assert_eq!(s.docker, DockerState::Running("20.10.24".into()));
        assert!(s.images.contains("p-redis:abc"));
        assert_eq!(
            s.containers["p-pg"],
            ContainerState {
                running: false,
                spec: "spec2".into(),
                secrets: [
                    ("PG_PASSWORD".to_string(), "aaaa".to_string()),
                    ("OTHER".to_string(), "bbbb".to_string())
                ]
                .into(),
            }
        );
        assert!(s.networks.contains("p") && s.volumes.contains("pgdata"));
        assert_eq!(s.firewall.as_deref(), Some("f00d"));
        assert!(s.bases.contains("debian:bookworm"));
        assert_eq!(s.recently_unpullable("fluent/fluentd:v1", 3600), Some(1000));
        assert_eq!(s.recently_unpullable("fluent/fluentd:v1", 50), None);
        assert_eq!(s.recently_unpullable("other", 3600), None);
    }

    #[test]
    fn conditions_follow_the_state() {
        let s = HostState::parse(SAMPLE);
        assert!(!s.holds(&Condition::DockerNotRunning));
        assert!(!s.holds(&Condition::ImageMissing {
            tag: "p-redis:abc".into()
        }));
        assert!(s.holds(&Condition::ImageMissing {
            tag: "p-redis:def".into()
        }));
        let same = Condition::ContainerOutdated {
            name: "p-redis".into(),
            spec: "spec1".into(),
            secrets: BTreeMap::new(),
        };
        assert!(!s.holds(&same));
        let changed = Condition::ContainerOutdated {
            name: "p-redis".into(),
            spec: "other".into(),
            secrets: BTreeMap::new(),
        };
        assert!(s.holds(&changed) && !s.only_stopped(&changed));
        let stopped = Condition::ContainerOutdated {
            name: "p-pg".into(),
            spec: "spec2".into(),
            secrets: BTreeMap::new(),
        };
        assert!(s.holds(&stopped) && s.only_stopped(&stopped));
        assert!(!s.holds(&Condition::FirewallDiffers {
            marker: "f00d".into()
        }));
    }

    #[test]
    fn a_secret_whose_digest_differs_from_the_label_is_rotated() {
        let s = HostState::parse(SAMPLE);
        let wanted = |pairs: &[(&str, &str)]| Condition::ContainerOutdated {
            name: "p-pg".into(),
            spec: "spec3".into(),
            secrets: pairs
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
        };
        assert_eq!(
            s.rotated(&wanted(&[("PG_PASSWORD", "cccc"), ("OTHER", "bbbb")])),
            vec!["PG_PASSWORD".to_string()]
        );
        assert!(s
            .rotated(&wanted(&[("PG_PASSWORD", "aaaa"), ("NEW", "dddd")]))
            .is_empty());
        // A container with no label (made before labels): nothing to say.
        let mut gone = wanted(&[("PG_PASSWORD", "cccc")]);
        if let Condition::ContainerOutdated { name, .. } = &mut gone {
            *name = "p-redis".into();
        }
        assert!(s.rotated(&gone).is_empty());
    }

    #[test]
    fn an_unhooked_chain_is_no_firewall() {
        let s = HostState::parse("@docker 1\n@firewall\nprovision f00d\n");
        assert!(s.holds(&Condition::FirewallDiffers {
            marker: "f00d".into()
        }));
    }

    #[test]
    fn missing_docker_makes_everything_pending() {
        let s = HostState::blank();
        assert!(s.holds(&Condition::DockerNotRunning));
        assert!(s.holds(&Condition::NetworkMissing { name: "p".into() }));
    }
}

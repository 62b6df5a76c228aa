//! What a playground machine is: its spec, the names derived from it, and the
//! checks a set of specs must pass before anything touches the engine. Pure.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use super::Error;

/// How a machine boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Init {
    /// systemd runs as PID 1, like on a VM; services are managed with systemctl.
    #[default]
    Systemd,
    /// No init system: sshd is the container's command (like some minimal hosts).
    None,
}

impl Init {
    /// The word used in image tags and template folders: `systemd` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::None => "none",
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest port published on 127.0.0.1 of the computer running the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// A share of the computer's CPUs, in hundredths (Docker's `--cpus`
/// granularity): `Cpus(150)` is one and a half CPUs. Separate VMs do not
/// share their cores; machines limited to one CPU each behave more like them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cpus(pub u32);

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, part) = (self.0 / 100, self.0 % 100);
        match part {
            0 => write!(f, "{whole}"),
            p if p % 10 == 0 => write!(f, "{whole}.{}", p / 10),
            p => write!(f, "{whole}.{p:02}"),
        }
    }
}

/// One local playground machine, as the inventory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The project: prefix of every Docker object name and value of their project label.
    pub project: String,
    /// The host's name in the inventory; also the machine's hostname.
    pub name: String,
    /// The machine's own address on the project's network.
    pub address: Ipv4Addr,
    pub init: Init,
    pub forwards: Vec<PortForward>,
    /// `None`: no limit, the machine may use every CPU.
    pub cpus: Option<Cpus>,
}

/// Label naming the project on every container, volume, network.
pub const LABEL_PROJECT: &str = "dev.provision.project";
/// Label naming the machine on its container and volume.
pub const LABEL_MACHINE: &str = "dev.provision.machine";
/// Label holding the spec a container was created from (`MachineSpec::fingerprint`).
pub const LABEL_SPEC: &str = "dev.provision.spec";

impl MachineSpec {
    /// A systemd machine with no forwards.
    pub fn new(project: &str, name: &str, address: Ipv4Addr) -> Self {
        MachineSpec {
            project: project.to_string(),
            name: name.to_string(),
            address,
            init: Init::Systemd,
            forwards: Vec::new(),
            cpus: None,
        }
    }

    /// Container name: `PROJECT-NAME`.
    pub fn container_name(&self) -> String {
        format!("{}-{}", self.project, self.name)
    }

    /// What a container cannot change once created, in words:
    /// `init=systemd address=10.213.4.10 forwards=8080:80,2222:22`, then
    /// ` cpus=1.5` only when limited, so that machines made before the
    /// limit existed still match.
    pub fn fingerprint(&self) -> String {
        let forwards: Vec<String> = self
            .forwards
            .iter()
            .map(|f| format!("{}:{}", f.host_port, f.guest_port))
            .collect();
        let mut words = format!(
            "init={} address={} forwards={}",
            self.init,
            self.address,
            forwards.join(",")
        );
        if let Some(cpus) = self.cpus {
            words.push_str(&format!(" cpus={cpus}"));
        }
        words
    }

    /// Named volume mounted at /var/lib/docker: `PROJECT-NAME-docker`.
    pub fn volume_name(&self) -> String {
        format!("{}-{}-docker", self.project, self.name)
    }
}

/// The project's Docker network name: `PROJECT-machines`.
pub fn network_name(project: &str) -> String {
    format!("{project}-machines")
}

/// The /24 subnet that holds every address, e.g. `10.213.4.0/24`.
pub fn subnet_of(address: Ipv4Addr) -> String {
    let [a, b, c, _] = address.octets();
    format!("{a}.{b}.{c}.0/24")
}

/// Check a set of specs belongs to one project, one /24, and that names,
/// addresses and forwarded host ports do not collide. Returns the project and
/// the subnet. An empty set is an error: there is nothing to name the network after.
pub fn validate(specs: &[MachineSpec]) -> Result<(String, String), Error> {
    let first = specs
        .first()
        .ok_or_else(|| Error::Invalid("no machines given".into()))?;
    check_name("project", &first.project)?;
    let subnet = subnet_of(first.address);
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut host_ports = HashSet::new();
    for spec in specs {
        let at = format!("machine {}", spec.name);
        check_name(&at, &spec.name)?;
        if spec.project != first.project {
            return Err(Error::Invalid(format!(
                "{at}: project {:?} differs from {:?}; one call handles one project",
                spec.project, first.project
            )));
        }
        if subnet_of(spec.address) != subnet {
            return Err(Error::Invalid(format!(
                "{at}: address {} is outside {subnet} (where {} is); \
                 all machines of a project must share one /24",
                spec.address, first.name
            )));
        }
        let last = spec.address.octets()[3];
        if matches!(last, 0 | 1 | 255) {
            return Err(Error::Invalid(format!(
                "{at}: address {} is reserved (.0 is the network, .1 the gateway, .255 broadcast)",
                spec.address
            )));
        }
        if !names.insert(spec.name.as_str()) {
            return Err(Error::Invalid(format!("{at}: name used twice")));
        }
        if !addresses.insert(spec.address) {
            return Err(Error::Invalid(format!(
                "{at}: address {} used twice",
                spec.address
            )));
        }
        for forward in &spec.forwards {
            if forward.host_port == 0 || forward.guest_port == 0 {
                return Err(Error::Invalid(format!("{at}: forward ports must not be 0")));
            }
            if !host_ports.insert(forward.host_port) {
                return Err(Error::Invalid(format!(
                    "{at}: host port {} forwarded twice",
                    forward.host_port
                )));
            }
        }
    }
    Ok((first.project.clone(), subnet))
}

/// Names become Docker object names and hostnames: lowercase letters, digits
/// and inner dashes, at most 48 characters.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what}: name {name:?} must be 1-48 lowercase letters, digits or inner dashes"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, address: [u8; 4]) -> MachineSpec {
        MachineSpec::new("demo", name, Ipv4Addr::from(address))
    }

    #[test]
    fn names_derive_from_project_and_machine() {
        let s = spec("web", [10, 213, 4, 10]);
        assert_eq!(s.container_name(), "demo-web");
        assert_eq!(s.volume_name(), "demo-web-docker");
        assert_eq!(network_name("demo"), "demo-machines");
        let mut s = s;
        s.forwards.push(PortForward {
            host_port: 8080,
            guest_port: 80,
        });
        assert_eq!(
            s.fingerprint(),
            "init=systemd address=10.213.4.10 forwards=8080:80"
        );
        s.cpus = Some(Cpus(150));
        assert_eq!(
            s.fingerprint(),
            "init=systemd address=10.213.4.10 forwards=8080:80 cpus=1.5"
        );
    }

    #[test]
    fn cpus_read_as_written() {
        let shown: Vec<String> = [100, 150, 125, 5, 1200]
            .into_iter()
            .map(|n| Cpus(n).to_string())
            .collect();
        assert_eq!(shown, ["1", "1.5", "1.25", "0.05", "12"]);
    }

    #[test]
    fn valid_set_yields_project_and_subnet() {
        let specs = [spec("web", [10, 213, 4, 10]), spec("db", [10, 213, 4, 11])];
        assert_eq!(
            validate(&specs).unwrap(),
            ("demo".to_string(), "10.213.4.0/24".to_string())
        );
    }

    #[test]
    fn rejects_mixed_subnets_duplicates_and_reserved() {
        let err = |specs: &[MachineSpec]| validate(specs).unwrap_err().to_string();
        assert!(err(&[spec("a", [10, 0, 0, 5]), spec("b", [10, 0, 1, 5])]).contains("one /24"));
        assert!(err(&[spec("a", [10, 0, 0, 5]), spec("a", [10, 0, 0, 6])]).contains("twice"));
        assert!(err(&[spec("a", [10, 0, 0, 5]), spec("b", [10, 0, 0, 5])]).contains("twice"));
        assert!(err(&[spec("a", [10, 0, 0, 1])]).contains("gateway"));
        assert!(err(&[spec("Web", [10, 0, 0, 5])]).contains("lowercase"));
        assert!(err(&[]).contains("no machines"));
        let mut a = spec("a", [10, 0, 0, 5]);
        let mut b = spec("b", [10, 0, 0, 6]);
        a.forwards.push(PortForward {
            host_port: 2222,
            guest_port: 22,
        });
        b.forwards = a.forwards.clone();
        assert!(err(&[a, b]).contains("forwarded twice"));
    }
}

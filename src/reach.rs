//! Who may connect to each published port, and the address it is
//! published on. Nothing is reachable from outside a host unless the user
//! opened it (`public = true`): a port used by services on other hosts is
//! published on the host's own address and only those hosts get through
//! the firewall; a port that this computer forwards to (a local machine's
//! `forward`) admits this computer; any other port is published on
//! 127.0.0.1 only (Docker's log driver reaches a same-host Fluentd there).
//! Pure.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use crate::diagnostics::Diagnostic;
use crate::inventory::{Host, Inventory, Service};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortReach {
    pub service: String,
    pub host_port: u16,
    pub container_port: u16,
    /// The address it is published on; `None`: every address of the host.
    pub bind: Option<String>,
    pub from: Reach,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "who", rename_all = "kebab-case")]
pub enum Reach {
    /// `public = true`: published on every address, no firewall rule.
    Anyone,
    /// Published on 127.0.0.1: the host itself and its containers' log driver.
    ThisHost,
    /// Published on the host's address; the firewall admits only these.
    Only { peers: Vec<Peer> },
}

/// A host (or this computer) the firewall admits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// A host's name, or `this computer` for a local machine's forward.
    pub name: String,
    pub address: String,
}

/// The other hosts whose services use `s` (wiring or logs), in file order.
pub fn users<'a>(inv: &'a Inventory, s: &Service) -> Vec<&'a Host> {
    let mut out: Vec<&Host> = Vec::new();
    for c in &inv.services {
        let uses = c.uses.contains(&s.name) || c.logs_to.as_ref() == Some(&s.name);
        if uses && c.host != s.host {
            if let Some(h) = inv.host(&c.host) {
                if !out.iter().any(|o| o.name == h.name) {
                    out.push(h);
                }
            }
        }
    }
    out
}

/// The gateway of a local machine's network: where this computer's
/// forwards (and this computer itself) come from, as the machine sees it.
fn machines_gateway(address: &str) -> Option<String> {
    let a: Ipv4Addr = address.parse().ok()?;
    let [x, y, z, _] = a.octets();
    Some(Ipv4Addr::new(x, y, z, 1).to_string())
}

/// The published ports of `s` and who may reach each. An error when a port
/// must be published on the host's own address and that is not an IP.
pub fn of_service(inv: &Inventory, s: &Service) -> Result<Vec<PortReach>, Diagnostic> {
    let host = inv.host(&s.host).expect("validated host");
    let mut out = Vec::new();
    for p in &s.publish {
        let (bind, from) = if s.public {
            (None, Reach::Anyone)
        } else {
            let mut peers: Vec<Peer> = users(inv, s)
                .into_iter()
                .map(|h| Peer {
                    name: h.name.clone(),
                    address: h.wire_address().to_string(),
                })
                .collect();
            let forwarded = host
                .machine
                .iter()
                .flat_map(|m| m.forward.iter())
                .find(|f| f.guest_port == p.host_port);
            if let (Some(f), Some(gw)) = (forwarded, machines_gateway(&host.address)) {
                peers.push(Peer {
                    name: format!("this computer (forward 127.0.0.1:{})", f.host_port),
                    address: gw,
                });
            }
            if peers.is_empty() {
                (Some("127.0.0.1".to_string()), Reach::ThisHost)
            } else {
                (
                    Some(own_ip(inv, host, s, p.host_port)?),
                    Reach::Only { peers },
                )
            }
        };
        out.push(PortReach {
            service: s.name.clone(),
            host_port: p.host_port,
            container_port: p.container_port,
            bind,
            from,
        });
    }
    Ok(out)
}

fn own_ip(inv: &Inventory, host: &Host, s: &Service, port: u16) -> Result<String, Diagnostic> {
    let a = host.wire_address();
    match a.parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => {
            let key = if host.private_address.is_some() {
                "private_address"
            } else {
                "address"
            };
            Err(inv.diagnostic(
                &format!("hosts.{}.{key}", host.name),
                format!(
                    "port {port} of service `{}` is published on this host's own address only \
                     (never on all of them), and `{a}` is a name, not an IP address",
                    s.name
                ),
                Some(format!(
                    "add private_address = \"IP\" to [hosts.{}]: the address the other hosts reach it at",
                    host.name
                )),
            ))
        }
    }
}

/// The bind address of every published port of `s` (one per service:
/// `public` is the service's).
pub fn bind_address(inv: &Inventory, s: &Service) -> Result<Option<String>, Diagnostic> {
    Ok(of_service(inv, s)?.into_iter().next().and_then(|r| r.bind))
}

/// One line for the plan: `5432 (postgis) on 10.0.0.11: only web (10.0.0.10)`.
pub fn describe(r: &PortReach) -> String {
    let on = match &r.bind {
        None => "every address".to_string(),
        Some(a) => a.clone(),
    };
    let who = match &r.from {
        Reach::Anyone => "anyone (public = true)".to_string(),
        Reach::ThisHost => "this host only".to_string(),
        Reach::Only { peers } => format!(
            "only {}",
            peers
                .iter()
                .map(|p| format!("{} ({})", p.name, p.address))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let port = if r.host_port == r.container_port {
        r.host_port.to_string()
    } else {
        format!("{}->{}", r.host_port, r.container_port)
    };
    format!("{port} ({}) on {on}: {who}", r.service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_kind() {
        let r = PortReach {
            service: "postgis".into(),
            host_port: 5432,
            container_port: 5432,
            bind: Some("10.0.0.11".into()),
            from: Reach::Only {
                peers: vec![Peer {
                    name: "web".into(),
                    address: "10.0.0.10".into(),
                }],
            },
        };
        assert_eq!(
            describe(&r),
            "5432 (postgis) on 10.0.0.11: only web (10.0.0.10)"
        );
        let r = PortReach {
            bind: None,
            from: Reach::Anyone,
            host_port: 8080,
            container_port: 80,
            service: "nginx".into(),
        };
        assert_eq!(
            describe(&r),
            "8080->80 (nginx) on every address: anyone (public = true)"
        );
        assert_eq!(
            machines_gateway("10.216.3.11").as_deref(),
            Some("10.216.3.1")
        );
    }
}

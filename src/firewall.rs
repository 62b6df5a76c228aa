//! The firewall of a host's published ports, as files and one shell line
//! (pure builders, like `commands`). Only the admitted peers of a port
//! (see `reach`) get through; everyone else is dropped, over IPv4 and IPv6,
//! both where Docker forwards published ports (its DOCKER-USER chain) and
//! where docker-proxy accepts them on the host itself (INPUT).
//!
//! Changes are atomic: each address family is one `iptables-restore
//! --noflush` transaction that rebuilds the project's chains, hooks them and
//! writes the marker the probe trusts last, so a failing rule leaves the old
//! rules in force. The same script runs before dockerd starts at boot (a
//! docker.service drop-in with systemd; provision's own dockerd start
//! without an init system), so a reboot never publishes a port unguarded.

use std::net::IpAddr;

use crate::commands::{remote_root, shell};
use crate::templates::ContextFile;

/// A published port and who may connect to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Guard {
    pub port: u16,
    /// The host address the port is published on.
    pub bind: String,
    /// Addresses (or names) admitted.
    pub allowed: Vec<String>,
    /// A UDP port (a swarm's gossip and VXLAN); TCP otherwise.
    pub udp: bool,
}

/// The project's chain hooked into DOCKER-USER (published ports Docker
/// forwards to containers). iptables chain names are at most 28 characters.
pub fn forward_chain(project: &str) -> String {
    let mut c = format!("PV-{project}");
    c.truncate(28);
    c
}

/// The project's chain hooked into INPUT (docker-proxy on the host).
pub fn input_chain(project: &str) -> String {
    let mut c = format!("PVI-{project}");
    c.truncate(28);
    c
}

pub fn dir(project: &str) -> String {
    format!("{}/firewall", remote_root(project))
}

fn is_v6(a: &str) -> bool {
    matches!(a.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
}

/// iptables-restore lines for one family (`v6`), without table or COMMIT.
fn rules(project: &str, guards: &[Guard], v6: bool) -> String {
    let fwd = forward_chain(project);
    let inp = input_chain(project);
    let mut out = String::new();
    for g in guards {
        let allowed: Vec<&String> = g.allowed.iter().filter(|a| is_v6(a) == v6).collect();
        let port = g.port;
        let proto = if g.udp { "udp" } else { "tcp" };
        // Matched by the original destination, before Docker's DNAT.
        let (fwd_match, in_match) = if is_v6(&g.bind) == v6 {
            let b = &g.bind;
            (
                format!(
                    "-p {proto} -m conntrack --ctorigdst {b} --ctorigdstport {port} --ctdir ORIGINAL"
                ),
                format!("-p {proto} -d {b} --dport {port}"),
            )
        } else {
            // Not published in this family at all; should a listener
            // appear on it anyway (another bind, a proxy), it stays closed.
            (
                format!("-p {proto} -m conntrack --ctorigdstport {port} --ctdir ORIGINAL"),
                format!("-p {proto} --dport {port}"),
            )
        };
        for (chain, m) in [(&fwd, &fwd_match), (&inp, &in_match)] {
            for a in &allowed {
                out.push_str(&format!("-A {chain} {m} -s {a} -j RETURN\n"));
            }
            out.push_str(&format!("-A {chain} {m} -j DROP\n"));
        }
    }
    out
}

/// The script that applies the rules next to it (run with `sh`).
fn apply_script(project: &str, marker: &str) -> String {
    let fwd = forward_chain(project);
    let inp = input_chain(project);
    format!(
        r#"#!/bin/sh
# Written by provision: the firewall of project {project}'s published ports.
# Run at each provision run and before dockerd starts. One iptables-restore
# transaction per family: the old rules stay in force if any rule fails.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
restore() {{
    ipt=$1 rules=$2 marker=$3
    {{
        echo '*filter'
        "$ipt" -w -S DOCKER-USER >/dev/null 2>&1 || echo ':DOCKER-USER - [0:0]'
        echo ':{fwd} - [0:0]'
        echo ':{inp} - [0:0]'
        echo '-F {fwd}'
        echo '-F {inp}'
        echo '-A {inp} -i lo -j RETURN'
        cat "$rules"
        "$ipt" -w -C DOCKER-USER -j {fwd} 2>/dev/null || echo '-I DOCKER-USER 1 -j {fwd}'
        "$ipt" -w -C INPUT -j {inp} 2>/dev/null || echo '-I INPUT 1 -j {inp}'
        # The marker the probe trusts, last.
        [ -z "$marker" ] || echo "-A {fwd} -m comment --comment \"provision $marker\""
        echo COMMIT
    }} | "$ipt-restore" -w --noflush
}}
if [ -e /proc/net/if_inet6 ] && command -v ip6tables-restore >/dev/null 2>&1; then
    restore ip6tables "$here/rules.v6" ""
fi
restore iptables "$here/rules.v4" {marker}
"#
    )
}

/// The docker.service drop-in that applies the rules before dockerd starts.
fn systemd_dropin(project: &str) -> String {
    // `$$` is systemd's escape for a literal `$`.
    format!(
        "# Written by provision: project {project}'s firewall before Docker publishes ports.\n\
         [Service]\n\
         ExecStartPre=/bin/sh -c 'f={}/apply; [ ! -e \"$$f\" ] || exec /bin/sh \"$$f\"'\n",
        dir(project)
    )
}

/// The files of the firewall step (uploaded beside the live ones, then
/// swapped in once they applied).
pub fn files(project: &str, guards: &[Guard], marker: &str) -> Vec<ContextFile> {
    let file = |path: &str, mode: u32, data: String| ContextFile {
        path: path.into(),
        mode,
        data: data.into_bytes(),
    };
    vec![
        file("apply", 0o700, apply_script(project, marker)),
        file("docker-dropin.conf", 0o644, systemd_dropin(project)),
        file("rules.v4", 0o600, rules(project, guards, false)),
        file("rules.v6", 0o600, rules(project, guards, true)),
    ]
}

/// Where the step uploads the new files.
pub fn staging_dir(project: &str) -> String {
    format!("{}.new", dir(project))
}

/// Install the boot hook, apply the staged rules, and only then make them
/// the ones restored at boot.
pub fn apply_line(project: &str) -> String {
    let live = dir(project);
    let staged = staging_dir(project);
    let dropin = format!("/etc/systemd/system/docker.service.d/provision-{project}-firewall.conf");
    let q = |s: &str| shell(&[s.to_string()]);
    format!(
        "sh {apply} && rm -rf {live} && mv {staged} {live} && \
         if [ -d /run/systemd/system ]; then mkdir -p /etc/systemd/system/docker.service.d && \
         install -m 0644 {live_dropin} {dropin} && systemctl daemon-reload; fi",
        apply = q(&format!("{staged}/apply")),
        live = q(&live),
        staged = q(&staged),
        live_dropin = q(&format!("{live}/docker-dropin.conf")),
        dropin = q(&dropin),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            port: 5432,
            bind: "10.0.0.11".into(),
            allowed: vec!["10.0.0.10".into(), "fd00::10".into()],
            udp: false,
        }
    }

    #[test]
    fn admits_peers_then_drops_in_both_chains_and_families() {
        let v4 = rules("pg", &[guard()], false);
        assert_eq!(
            v4,
            "-A PV-pg -p tcp -m conntrack --ctorigdst 10.0.0.11 --ctorigdstport 5432 --ctdir ORIGINAL -s 10.0.0.10 -j RETURN\n\
             -A PV-pg -p tcp -m conntrack --ctorigdst 10.0.0.11 --ctorigdstport 5432 --ctdir ORIGINAL -j DROP\n\
             -A PVI-pg -p tcp -d 10.0.0.11 --dport 5432 -s 10.0.0.10 -j RETURN\n\
             -A PVI-pg -p tcp -d 10.0.0.11 --dport 5432 -j DROP\n"
        );
        // Published on IPv4 only: over IPv6 the port is closed to all but
        // the IPv6 peers, whatever the address.
        let v6 = rules("pg", &[guard()], true);
        assert_eq!(
            v6,
            "-A PV-pg -p tcp -m conntrack --ctorigdstport 5432 --ctdir ORIGINAL -s fd00::10 -j RETURN\n\
             -A PV-pg -p tcp -m conntrack --ctorigdstport 5432 --ctdir ORIGINAL -j DROP\n\
             -A PVI-pg -p tcp --dport 5432 -s fd00::10 -j RETURN\n\
             -A PVI-pg -p tcp --dport 5432 -j DROP\n"
        );
    }

    #[test]
    fn the_marker_is_the_last_rule_of_the_transaction() {
        let s = apply_script("pg", "f00d");
        let marker = s.find("provision $marker").unwrap();
        let hooks = s.find("-I INPUT 1 -j PVI-pg").unwrap();
        let commit = s.find("echo COMMIT").unwrap();
        assert!(hooks < marker && marker < commit);
        assert_eq!(s.matches("-restore\" -w --noflush").count(), 1);
        assert!(s.ends_with("restore iptables \"$here/rules.v4\" f00d\n"));
    }

    #[test]
    fn staged_rules_become_live_only_once_applied() {
        let l = apply_line("pg");
        let apply = l
            .find("sh /var/lib/provision/pg/firewall.new/apply")
            .unwrap();
        let swap = l.find("mv /var/lib/provision/pg/firewall.new").unwrap();
        assert!(apply < swap, "{l}");
        assert!(systemd_dropin("pg").contains("\"$$f\""));
    }
}

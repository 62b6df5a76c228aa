//! Docker command lines for the playground, as values: the words after `docker`.
//! Nothing here runs anything; `docker.rs` does. Pure.

use super::image::{MachineImage, LABEL_BASE_IMAGE, LABEL_CONTENT_HASH};
use super::spec::{network_name, Init, MachineSpec, LABEL_MACHINE, LABEL_PROJECT, LABEL_SPEC};

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

/// `docker build` reading the Dockerfile from stdin (no context needed).
pub fn build_image(image: &MachineImage) -> Vec<String> {
    let mut cmd = words(&["build", "--quiet", "--tag"]);
    cmd.push(image.tag());
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_CONTENT_HASH}={}", image.content_hash));
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_BASE_IMAGE}={}", image.base_image));
    cmd.push("--build-arg".into());
    cmd.push(format!("BASE_IMAGE={}", image.base_image));
    cmd.push("-".into());
    cmd
}

/// The project's network, a bridge on the machines' /24.
pub fn create_network(project: &str, subnet: &str) -> Vec<String> {
    let mut cmd = words(&["network", "create", "--driver", "bridge", "--subnet"]);
    cmd.push(subnet.into());
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_PROJECT}={project}"));
    cmd.push(network_name(project));
    cmd
}

/// The machine's /var/lib/docker volume, labelled so it can be found again.
pub fn create_volume(spec: &MachineSpec) -> Vec<String> {
    let mut cmd = words(&["volume", "create", "--label"]);
    cmd.push(format!("{LABEL_PROJECT}={}", spec.project));
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_MACHINE}={}", spec.name));
    cmd.push(spec.volume_name());
    cmd
}

/// `docker run` for a machine, with the options that work on kernels whose
/// bounding set lacks CAP_SYS_RESOURCE (`--privileged` fails there).
pub fn run_machine(spec: &MachineSpec, image: &MachineImage) -> Vec<String> {
    let mut cmd = words(&["run", "--detach", "--name"]);
    cmd.push(spec.container_name());
    cmd.push("--hostname".into());
    cmd.push(spec.name.clone());
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_PROJECT}={}", spec.project));
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_MACHINE}={}", spec.name));
    cmd.push("--label".into());
    cmd.push(format!("{LABEL_SPEC}={}", spec.fingerprint()));
    cmd.push("--network".into());
    cmd.push(network_name(&spec.project));
    cmd.push("--ip".into());
    cmd.push(spec.address.to_string());
    cmd.extend(words(&[
        "--restart",
        "unless-stopped",
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--device-cgroup-rule",
        "a *:* rwm",
        "--volume",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs",
        "/run",
    ]));
    if spec.init == Init::Systemd {
        cmd.extend(words(&["--tmpfs", "/run/lock"]));
    }
    cmd.push("--volume".into());
    cmd.push(format!("{}:/var/lib/docker", spec.volume_name()));
    if let Some(cpus) = spec.cpus {
        cmd.push("--cpus".into());
        cmd.push(cpus.to_string());
    }
    for forward in &spec.forwards {
        cmd.push("--publish".into());
        cmd.push(format!(
            "127.0.0.1:{}:{}",
            forward.host_port, forward.guest_port
        ));
    }
    cmd.push(image.tag());
    cmd
}

/// Shell run inside a machine (`sh -c`) that adds the public key on stdin to
/// root's authorized_keys unless it is already there.
pub const AUTHORIZE_KEY_SCRIPT: &str = "set -e; key=$(cat); umask 077; mkdir -p /root/.ssh; \
     touch /root/.ssh/authorized_keys; \
     grep -qxF \"$key\" /root/.ssh/authorized_keys || printf '%s\\n' \"$key\" >> /root/.ssh/authorized_keys";

/// Shell run inside a machine that succeeds, printing the ed25519 host public
/// key, only once sshd listens on port 22 (read from /proc, no tools needed).
pub const SSH_READY_SCRIPT: &str = "grep -Eq '^ *[0-9]+: [0-9A-F]+:0016 [0-9A-F]+:0000 0A' \
     /proc/net/tcp /proc/net/tcp6 2>/dev/null && cat /etc/ssh/ssh_host_ed25519_key.pub";

/// `docker exec` of a shell script, with stdin attached when `stdin` is true.
pub fn exec_script(container: &str, script: &str, stdin: bool) -> Vec<String> {
    let mut cmd = vec!["exec".to_string()];
    if stdin {
        cmd.push("--interactive".into());
    }
    cmd.extend([
        container.to_string(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    cmd
}

/// Inspect a container: `ID STATUS SPEC-FINGERPRINT...` on one line.
pub fn inspect_container(spec: &MachineSpec) -> Vec<String> {
    vec![
        "container".into(),
        "inspect".into(),
        "--format".into(),
        format!("{{{{.Id}}}} {{{{.State.Status}}}} {{{{index .Config.Labels \"{LABEL_SPEC}\"}}}}"),
        spec.container_name(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::spec::{Cpus, PortForward};
    use std::net::Ipv4Addr;

    /// The command as one line; words with spaces in single quotes.
    fn line(cmd: &[String]) -> String {
        let shown: Vec<String> = cmd
            .iter()
            .map(|w| {
                if w.contains(' ') {
                    format!("'{w}'")
                } else {
                    w.clone()
                }
            })
            .collect();
        shown.join(" ")
    }

    #[test]
    fn run_systemd_machine() {
        let mut spec = MachineSpec::new("demo", "web", Ipv4Addr::new(10, 213, 4, 10));
        spec.forwards.push(PortForward {
            host_port: 8080,
            guest_port: 80,
        });
        let image = MachineImage::new(Init::Systemd, "debian:bookworm");
        let expected = format!(
            "run --detach --name demo-web --hostname web \
             --label dev.provision.project=demo --label dev.provision.machine=web \
             --label 'dev.provision.spec=init=systemd address=10.213.4.10 forwards=8080:80' \
             --network demo-machines --ip 10.213.4.10 --restart unless-stopped \
             --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
             --security-opt apparmor=unconfined --device-cgroup-rule 'a *:* rwm' \
             --volume /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
             --volume demo-web-docker:/var/lib/docker --publish 127.0.0.1:8080:80 {}",
            image.tag()
        );
        assert_eq!(line(&run_machine(&spec, &image)), expected);
    }

    #[test]
    fn run_no_init_machine_has_no_run_lock() {
        let mut spec = MachineSpec::new("demo", "db", Ipv4Addr::new(10, 213, 4, 11));
        spec.init = Init::None;
        let image = MachineImage::new(Init::None, "debian:bookworm");
        let cmd = line(&run_machine(&spec, &image));
        assert!(cmd.contains("--tmpfs /run --volume demo-db-docker:/var/lib/docker"));
        assert!(!cmd.contains("/run/lock"));
        assert!(!cmd.contains("--cpus"));
        spec.cpus = Some(Cpus(100));
        let cmd = line(&run_machine(&spec, &image));
        assert!(
            cmd.contains("--volume demo-db-docker:/var/lib/docker --cpus 1 "),
            "{cmd}"
        );
        // The fingerprint label ends with the limit.
        assert!(cmd.contains(" cpus=1'"), "{cmd}");
    }

    #[test]
    fn network_volume_and_build() {
        assert_eq!(
            line(&create_network("demo", "10.213.4.0/24")),
            "network create --driver bridge --subnet 10.213.4.0/24 \
             --label dev.provision.project=demo demo-machines"
        );
        let spec = MachineSpec::new("demo", "web", Ipv4Addr::new(10, 213, 4, 10));
        assert_eq!(
            line(&create_volume(&spec)),
            "volume create --label dev.provision.project=demo \
             --label dev.provision.machine=web demo-web-docker"
        );
        let image = MachineImage::new(Init::None, "debian:bookworm");
        assert_eq!(
            line(&build_image(&image)),
            format!(
                "build --quiet --tag {} --label dev.provision.content-hash={} \
                 --label dev.provision.base-image=debian:bookworm \
                 --build-arg BASE_IMAGE=debian:bookworm -",
                image.tag(),
                image.content_hash
            )
        );
    }
}

//! Local playground machines on the real Docker engine of this computer.
//!
//! Each test owns a project (`pvtest-PID-N`), a /24 in 10.213.0.0/16 and a
//! state folder; a `Lab` guard removes its containers, volumes and network
//! even when the test fails. Under CI=true a missing engine fails the test.
//! Traffic goes only to 127.0.0.1 and to the machines a test created.

mod support;

use std::time::Duration;

use provision::machines::{Cpus, Init, MachineState, PortForward, UpAction, LABEL_PROJECT};
use support::lab::Lab;
use support::wait::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_reachable_with_strict_host_keys_idempotent_and_down_cleans_up() {
    let Some(lab) = Lab::numbered("pvtest", 213) else {
        return;
    };
    let mut db = lab.spec("db", 11, Init::None);
    db.cpus = Some(Cpus(100));
    let specs = [lab.spec("web", 10, Init::Systemd), db];

    let first = lab.playground.up(&specs).await.unwrap();
    assert_eq!(first.len(), 2);
    // `cpus = 1` gives the machine one CPU's share; without it, no limit.
    let nano_cpus = |name: &str| {
        lab.docker(&["inspect", "-f", "{{.HostConfig.NanoCpus}}", name])
            .trim()
            .to_string()
    };
    assert_eq!(nano_cpus(&specs[0].container_name()), "0");
    assert_eq!(nano_cpus(&specs[1].container_name()), "1000000000");
    for (info, spec) in first.iter().zip(&specs) {
        assert_eq!(info.action, UpAction::Created);
        assert_eq!(info.address, spec.address);
        assert_eq!(info.ssh_port, 22);
        assert_eq!(info.state, MachineState::Running);
        assert_eq!(info.container, format!("{}-{}", lab.project, spec.name));
    }
    // Strict host-key checking with only the project's known_hosts, first try.
    assert_eq!(lab.ssh_ok(specs[0].address, "hostname").trim(), "web");
    assert_eq!(lab.ssh_ok(specs[1].address, "hostname").trim(), "db");
    assert_eq!(
        lab.ssh_ok(specs[0].address, "ps -o comm= -p 1").trim(),
        "systemd"
    );
    assert_eq!(
        lab.ssh_ok(specs[1].address, "ps -o comm= -p 1").trim(),
        "sshd"
    );
    let hosts_before = lab.known_hosts();
    assert_eq!(hosts_before.lines().count(), 2, "{hosts_before}");

    // Up again changes nothing.
    let again = lab.playground.up(&specs).await.unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(b.action, UpAction::AlreadyRunning);
        assert_eq!(a.container_id, b.container_id);
    }
    assert_eq!(lab.known_hosts(), hosts_before);
    let status = lab.playground.status(&specs).await.unwrap();
    assert!(status.iter().all(|s| s.state == MachineState::Running));

    // Down keeps the /var/lib/docker volumes; down --volumes removes them.
    lab.playground.down(&specs, false).await.unwrap();
    assert!(lab.containers().is_empty());
    let status = lab.playground.status(&specs).await.unwrap();
    assert!(status.iter().all(|s| s.state == MachineState::Absent));
    let mut volumes: Vec<String> = specs.iter().map(|s| s.volume_name()).collect();
    volumes.sort();
    assert_eq!(lab.volumes(), volumes);
    assert_eq!(lab.known_hosts(), "");
    lab.playground.down(&specs, true).await.unwrap();
    assert!(lab.volumes().is_empty());

    // Up re-creates them, each with a fresh host key recorded.
    let third = lab.playground.up(&specs).await.unwrap();
    assert!(third.iter().all(|m| m.action == UpAction::Created));
    let hosts_after = lab.known_hosts();
    for line in hosts_before.lines() {
        assert!(!hosts_after.contains(line), "stale host key kept: {line}");
    }
    assert_eq!(lab.ssh_ok(specs[0].address, "hostname").trim(), "web");
    assert_eq!(lab.ssh_ok(specs[1].address, "hostname").trim(), "db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_reaches_the_guest_on_loopback_stopped_machines_start_changed_ones_refuse() {
    let Some(lab) = Lab::numbered("pvtest", 213) else {
        return;
    };
    let host_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut spec = lab.spec("gate", 20, Init::None);
    spec.forwards.push(PortForward {
        host_port,
        guest_port: 22,
    });
    let specs = [spec];
    lab.playground.up(&specs).await.unwrap();

    let banner = eventually("SSH banner on the forward", Duration::from_secs(20), || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", host_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        text.starts_with("SSH-2.0-").then_some(text)
    })
    .await;
    assert!(banner.contains("OpenSSH"), "{banner}");
    let published = lab.docker(&["port", &specs[0].container_name(), "22"]);
    assert_eq!(published.trim(), format!("127.0.0.1:{host_port}"));

    // A stopped machine is started again, not re-created.
    lab.docker(&["stop", &specs[0].container_name()]);
    let status = lab.playground.status(&specs).await.unwrap();
    assert_eq!(status[0].state, MachineState::Stopped);
    let started = lab.playground.up(&specs).await.unwrap();
    assert_eq!(started[0].action, UpAction::Started);
    assert_eq!(
        Some(&started[0].container_id),
        status[0].container_id.as_ref()
    );
    assert_eq!(lab.ssh_ok(specs[0].address, "hostname").trim(), "gate");
    assert!(lab.playground.status(&specs).await.unwrap()[0].matches_spec);

    // A machine is not silently re-created when its spec changes.
    let mut changed = specs[0].clone();
    changed.forwards.clear();
    let changed = [changed];
    assert!(!lab.playground.status(&changed).await.unwrap()[0].matches_spec);
    let err = lab.playground.up(&changed).await.unwrap_err().to_string();
    assert!(err.contains("was created as"), "{err}");
    assert!(err.contains(&format!("forwards={host_port}:22")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_machine_can_install_and_run_its_own_docker() {
    let Some(lab) = Lab::numbered("pvtest", 213) else {
        return;
    };
    let specs = [
        lab.spec("vm", 10, Init::Systemd),
        lab.spec("bare", 11, Init::None),
    ];
    lab.playground.up(&specs).await.unwrap();

    let install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                   apt-get install -y -qq --no-install-recommends docker.io >/dev/null";
    // Like on VMs: systemd starts docker itself; with no init, dockerd is
    // started directly (Debian's init script fails without CAP_SYS_RESOURCE).
    let start = [
        format!("{install} && systemctl start docker && systemctl is-enabled docker"),
        format!("{install} && setsid -f dockerd >/var/log/dockerd.log 2>&1 </dev/null"),
    ];
    std::thread::scope(|scope| {
        let jobs: Vec<_> = specs
            .iter()
            .zip(&start)
            .map(|(spec, script)| scope.spawn(|| lab.ssh_ok(spec.address, script)))
            .collect();
        for job in jobs {
            job.join().unwrap();
        }
    });
    for spec in &specs {
        eventually(
            &format!("inner docker info on {}", spec.name),
            Duration::from_secs(60),
            || {
                lab.ssh(spec.address, "docker info --format '{{.ServerVersion}}'")
                    .status
                    .success()
                    .then_some(())
            },
        )
        .await;
        lab.ssh_ok(
            spec.address,
            "docker network create inner && docker network rm inner",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_taken_by_another_network_is_a_clear_error() {
    let Some(lab) = Lab::numbered("pvtest", 213) else {
        return;
    };
    let spec = lab.spec("web", 10, Init::None);
    let [a, b, c] = lab.net;
    let label = format!("{LABEL_PROJECT}={}", lab.project);
    let subnet = format!("{a}.{b}.{c}.0/24");
    let other = format!("{}-other", lab.project);
    lab.docker(&[
        "network", "create", "--subnet", &subnet, "--label", &label, &other,
    ]);

    let err = lab.playground.up(&[spec]).await.unwrap_err().to_string();
    assert!(err.contains("overlaps an existing Docker network"), "{err}");
    assert!(err.contains(&subnet), "{err}");
    assert!(lab.containers().is_empty());
}

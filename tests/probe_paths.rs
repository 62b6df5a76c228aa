//! The probe's two paths (one python3 process on the Docker socket, or the
//! docker CLI calls) tell the same story, on the local engine.

use std::process::Command;

use provision::commands;
use provision::probe::{DockerState, HostState};
use provision::transport::{Exec, LocalTransport, Transport};

fn docker(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn python_and_cli_probes_agree() {
    if !docker(&["info"]) || !docker(&["image", "inspect", "debian:bookworm"]) {
        eprintln!("skipped: no local Docker engine with debian:bookworm");
        return;
    }
    let project = format!("pvprobe{}", std::process::id());
    let label = format!("provision.project={project}");
    let name = format!("{project}-c");
    assert!(docker(&["network", "create", "--label", &label, &project]));
    assert!(docker(&["volume", "create", "--label", &label, &project]));
    assert!(docker(&[
        "create",
        "--name",
        &name,
        "--label",
        &label,
        "--label",
        "provision.spec=abc123",
        "debian:bookworm",
        "true",
    ]));
    let bases = ["debian:bookworm".to_string(), "no-such/image:0".to_string()];
    let line = commands::probe(&project, &bases);
    let run = |prefix: &str| {
        let line = format!("{prefix}{line}");
        async move {
            let out = LocalTransport::default()
                .exec(Exec::new(line))
                .await
                .unwrap();
            assert!(out.success(), "{}", out.stderr_str());
            HostState::parse(&out.stdout_str())
        }
    };
    let fast = run("").await;
    // DOCKER_HOST set: the python path stands aside.
    let cli = run("export DOCKER_HOST=unix:///var/run/docker.sock; ").await;

    docker(&["rm", "-f", &name]);
    docker(&["volume", "rm", &project]);
    docker(&["network", "rm", &project]);

    assert_eq!(fast, cli);
    assert!(matches!(fast.docker, DockerState::Running(_)));
    assert_eq!(fast.containers[&name].spec, "abc123");
    assert!(!fast.containers[&name].running);
    assert!(fast.networks.contains(&project));
    assert!(fast.volumes.contains(&project));
    assert_eq!(
        fast.bases.iter().collect::<Vec<_>>(),
        vec!["debian:bookworm"]
    );
}

/// The rerun fast path reads machines on the engine's socket; it must say
/// what `status` (the docker CLI) says.
#[tokio::test]
async fn quick_status_agrees_with_status() {
    use provision::machines::{MachineSpec, MachineState, Playground};
    if !docker(&["info"]) {
        eprintln!("skipped: no local Docker engine");
        return;
    }
    let project = format!("pvquick{}", std::process::id());
    let spec = MachineSpec::new(&project, "m", "10.215.250.10".parse().unwrap());
    let name = spec.container_name();
    let p = Playground::new(tempfile::tempdir().unwrap().path());
    let absent = p.quick_status(std::slice::from_ref(&spec)).await.unwrap();
    assert_eq!(absent, p.status(std::slice::from_ref(&spec)).await.unwrap());
    assert_eq!(absent[0].state, MachineState::Absent);

    // A stopped container of that name, from another spec (no label).
    assert!(docker(&[
        "create",
        "--name",
        &name,
        "debian:bookworm",
        "true"
    ]));
    let quick = p.quick_status(std::slice::from_ref(&spec)).await.unwrap();
    let slow = p.status(std::slice::from_ref(&spec)).await.unwrap();
    docker(&["rm", "-f", &name]);
    assert_eq!(quick, slow);
    assert_eq!(quick[0].state, MachineState::Stopped);
    assert!(!quick[0].matches_spec);
}

//! The probe's two paths (Docker's API socket, or the docker CLI calls) tell
//! the same story, on the local engine; so does the machines' quick status.
//! A missing engine is a failure: .ci/run starts one.

mod support;

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

fn need_engine() {
    support::lab::engine(true);
    if !docker(&["image", "inspect", "debian:bookworm"]) {
        // Other tests build it with debootstrap; any small image will do here.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(provision::machines::Playground::new(std::env::temp_dir()).ensure_base_image())
            .expect("debian:bookworm");
    }
}

#[test]
fn api_and_cli_probes_agree() {
    need_engine();
    let rt = tokio::runtime::Runtime::new().unwrap();
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
    let local = LocalTransport::default();
    let (api, cli) = rt.block_on(async {
        let api = provision::docker_api::probe(&local, &project, &bases, false, None)
            .await
            .expect("the API probe answers in time")
            .expect("the API probe answers on the local socket");
        let out = local
            .exec(Exec::new(commands::probe(&project, &bases)))
            .await
            .unwrap();
        assert!(out.success(), "{}", out.stderr_str());
        (HostState::parse(&api), HostState::parse(&out.stdout_str()))
    });
    let (mut fast, cli) = (api, cli);
    fast.now = cli.now;

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
#[test]
fn quick_status_agrees_with_status() {
    need_engine();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(quick_status_agrees());
}

async fn quick_status_agrees() {
    use provision::machines::{MachineSpec, MachineState, Playground};
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

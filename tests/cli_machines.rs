//! Issue 4's path through the command line: `--machines-only` leaves two
//! machines reachable over SSH at their own addresses with strict host-key
//! checking; `down` removes them; running again re-creates them.
//! Traffic goes only to the machines this test creates (10.217.x.0/24).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

fn provision(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(["--hosts", "hosts.toml"])
        .args(args)
        .output()
        .unwrap()
}

fn ssh(dir: &Path, address: &str) -> Output {
    let state = dir.join(".provision");
    Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            state.join("known_hosts").display()
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(state.join("id_ed25519"))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("root@{address}"))
        .arg("hostname")
        .output()
        .unwrap()
}

fn containers(project: &str) -> String {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=provision.project={project}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = provision(self.0, &["down", "--volumes"]);
    }
}

#[test]
fn machines_only_then_down_then_up_again() {
    let docker = Command::new("docker").arg("info").output();
    assert!(
        docker.map(|o| o.status.success()).unwrap_or(false),
        "this test needs a running local Docker engine (.ci/run starts dockerd)"
    );
    let pid = std::process::id();
    let net = format!("10.217.{}", 20 + pid % 200);
    let project = format!("pvcli-{pid}");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[project]\nname = \"{project}\"\n\n\
         [hosts.web]\nmachine = \"local\"\naddress = \"{net}.10\"\n\n\
         [hosts.db]\nmachine = \"local\"\ninit = \"none\"\naddress = \"{net}.11\"\n\n\
         [services.redis]\nhost = \"web\"\ntemplate = \"redis\"\n"
    );
    std::fs::write(dir.path().join("hosts.toml"), toml).unwrap();
    let _down = Down(dir.path());

    for round in 0..2 {
        let out = provision(dir.path(), &["--machines-only"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (name, last) in [("web", 10), ("db", 11)] {
            let out = ssh(dir.path(), &format!("{net}.{last}"));
            assert!(
                out.status.success(),
                "round {round}: ssh {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
        }
        let status = provision(dir.path(), &["status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.contains("machine web") && text.contains("Running"),
            "{text}"
        );

        let out = provision(dir.path(), &["down"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(containers(&project).trim(), "", "down left containers");
        assert!(
            !ssh(dir.path(), &format!("{net}.10")).status.success(),
            "a removed machine still answers"
        );
    }
}

//! ssh-agent authentication. A test binary of its own: it sets
//! SSH_AUTH_SOCK for the whole process, which would leak into other tests.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provision::transport::{Exec, SshTarget, SshTransport, Transport};
use support::sshd::Sshd;

/// An `ssh-agent -D` on a socket in `dir`; killed on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(sock: &Path) -> Agent {
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent socket never appeared");
            std::thread::sleep(Duration::from_millis(10)); // poll interval
        }
        Agent { child }
    }

    fn add(&self, sock: &Path, key: &Path) {
        let st = Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", sock)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keys_are_used_without_identity_and_after_a_refused_one() {
    let sshd = Sshd::start();
    let sock = sshd.dir.path().join("agent.sock");
    let agent = Agent::start(&sock);
    // The agent holds a key the server does not know, then an RSA key it does.
    let stranger = sshd.new_key("stranger", "ed25519", "");
    let rsa = sshd.new_key("agent_rsa", "rsa", "");
    sshd.authorize("root", &rsa.with_extension("pub"));
    agent.add(&sock, &stranger);
    agent.add(&sock, &rsa);
    // The only test in this binary: nothing else reads the environment.
    std::env::set_var("SSH_AUTH_SOCK", &sock);

    let mut tg = SshTarget::new("agenthost", "127.0.0.1");
    tg.port = sshd.port;
    tg.user = "root".into();
    tg.known_hosts = vec![sshd.known_hosts_file()];
    tg.ssh_dir = Some(sshd.subdir("empty-home"));
    let t = SshTransport::connect(tg.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert!(t.exec(Exec::new("true")).await.unwrap().success());

    // An explicit key that is refused falls back to the agent.
    tg.identity = Some(stranger.clone());
    let t = SshTransport::connect(tg.clone()).await.unwrap();
    assert!(t.exec(Exec::new("true")).await.unwrap().success());
    assert!(sshd.log().contains("RSA SHA256:"));

    // With no usable key anywhere, the error lists the agent's keys too.
    std::fs::write(sshd.dir.path().join("authorized_keys/root"), "").unwrap();
    let msg = SshTransport::connect(tg).await.unwrap_err().to_string();
    assert!(msg.contains("agent key"), "{msg}");
    assert!(msg.contains(&stranger.display().to_string()), "{msg}");
}

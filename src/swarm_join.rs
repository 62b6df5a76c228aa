//! A node joins its swarm. The join token is read from the manager over
//! its SSH connection and handed to the node's Docker API through this
//! node's connection: it is never printed, logged, or put in a command
//! line where the API can be reached (a sudo user's node is the exception:
//! its `docker swarm join` carries the token in its argv for the second
//! the command runs, said in the README).

use std::time::Duration;

use serde_json::json;

use crate::commands::{self, argv, shell};
use crate::transport::{Exec, Transport};

const JOIN_DEADLINE: Duration = Duration::from_secs(90);

/// Join the node behind `node` to the swarm whose manager is behind
/// `manager` at `remote` (`ADDR:2377`), as `role` (worker, manager),
/// advertising `advertise`. A node in another swarm (a replaced
/// manager's, a stale one) leaves it first.
pub async fn join(
    manager: &dyn Transport,
    node: &dyn Transport,
    remote: &str,
    advertise: &str,
    role: &str,
) -> Result<(), String> {
    let out = manager
        .exec(
            Exec::new(shell(&argv(["docker", "swarm", "join-token", "-q", role])))
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| format!("cannot read the join token from {}: {e}", manager.name()))?;
    if !out.success() {
        return Err(format!(
            "cannot read the join token from {}: {}",
            manager.name(),
            out.stderr_str().trim()
        ));
    }
    let token = out.stdout_str().trim().to_string();
    if token.is_empty() {
        return Err(format!("{} gave no join token", manager.name()));
    }
    // Out of any other swarm first; a node in none says so, which is fine.
    let _ = node
        .exec(
            Exec::new("docker swarm leave --force >/dev/null 2>&1 || true").timeout(JOIN_DEADLINE),
        )
        .await;
    let body = json!({
        "ListenAddr": "0.0.0.0:2377",
        "AdvertiseAddr": advertise,
        "RemoteAddrs": [remote],
        "JoinToken": token,
    });
    match crate::docker_api::post_json(node, "/swarm/join", &body, JOIN_DEADLINE).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(format!("joining the swarm at {remote} failed: {message}")),
        Err(_) => {
            // No API socket through this connection: the CLI, the token on
            // stdin into its argv.
            let line = format!(
                "docker swarm join --token \"$(cat)\" {}",
                shell(&argv(["--advertise-addr", advertise, remote]))
            );
            let out = node
                .exec(
                    Exec::new(line)
                        .stdin_bytes(token.into_bytes())
                        .timeout(JOIN_DEADLINE),
                )
                .await
                .map_err(|e| e.to_string())?;
            succeeded(&out, || format!("joining the swarm at {remote} failed"))
        }
    }
}

/// After `node` joined: the manager labels it with its hosts.toml `name`
/// and removes any other node entry at its `address`, which a replaced
/// machine left behind (the swarm may still call it ready for a while, so
/// the run's own nodes step, judged before the join, cannot see it).
pub async fn claim(
    manager: &dyn Transport,
    node: &dyn Transport,
    address: &str,
    name: &str,
) -> Result<(), String> {
    let out = node
        .exec(
            Exec::new(shell(&argv([
                "docker",
                "info",
                "--format",
                "{{.Swarm.NodeID}}",
            ])))
            .timeout(Duration::from_secs(30))
            .idempotent(true),
        )
        .await
        .map_err(|e| e.to_string())?;
    let id = out.stdout_str().trim().to_string();
    if !out.success() || id.is_empty() {
        return Err(format!(
            "joined, but {} does not say its node id: {}",
            node.name(),
            out.stderr_str().trim()
        ));
    }
    let out = manager
        .exec(Exec::new(commands::claim_node(&id, address, name)).timeout(JOIN_DEADLINE))
        .await
        .map_err(|e| e.to_string())?;
    succeeded(&out, || {
        format!(
            "{} joined, but {} could not label it",
            node.name(),
            manager.name()
        )
    })
}

/// `Ok` when the command succeeded, else `what` with its stderr.
fn succeeded(out: &crate::transport::ExecOutput, what: impl Fn() -> String) -> Result<(), String> {
    if out.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", what(), out.stderr_str().trim()))
    }
}

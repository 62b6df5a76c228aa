//! `logs` and `exec`: a service's container logs, streamed from whichever
//! host runs it, and a command run in its container. Read-only for
//! provision: they connect ([`session::connect`]) without taking the
//! hosts' locks. The host and container of a service come from the
//! inventory and the plan's naming ([`plan::container_name`]); the commands
//! are argv values from [`commands`], quoted once.
//!
//! Exit codes: 2 for an unknown service (nothing run), 1 when a host cannot
//! be reached; `exec` otherwise exits with the remote command's status.

use std::sync::Arc;

use futures::future::join_all;
use tokio::io::AsyncWriteExt;

use crate::commands::{self, LogsOptions};
use crate::inventory::{Inventory, Service};
use crate::plan;
use crate::session;
use crate::transport::{Exec, Stream, Transport};

use super::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

/// The services named, in the inventory's order when none is named (all
/// of them); an unknown name is an input error listing the known ones.
fn pick<'a>(inv: &'a Inventory, names: &[String]) -> Result<Vec<&'a Service>, i32> {
    if names.is_empty() {
        return Ok(inv.services.iter().collect());
    }
    let unknown: Vec<String> = names
        .iter()
        .filter_map(|n| inv.service_named(n).err())
        .collect();
    if !unknown.is_empty() {
        for e in unknown {
            eprintln!("error: {e}");
        }
        eprintln!("provision: nothing was run on any host");
        return Err(EXIT_BAD_INPUT);
    }
    let mut picked: Vec<&Service> = Vec::new();
    for n in names {
        let s = inv.service(n).expect("checked above");
        if !picked.iter().any(|p| p.name == s.name) {
            picked.push(s);
        }
    }
    Ok(picked)
}

/// One connection to each host that runs one of `services`.
async fn connect_hosts(
    inv: &Inventory,
    services: &[&Service],
) -> Vec<(String, Result<Arc<dyn Transport>, String>)> {
    let mut hosts: Vec<&str> = Vec::new();
    for s in services {
        let h = where_logs(inv, s);
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    session::connect(inv, &hosts)
        .await
        .into_iter()
        .map(|o| (o.name, o.transport))
        .collect()
}

/// Where a service's logs are read: its host; in swarm mode the first
/// manager, which reads every task's.
fn where_logs<'a>(inv: &'a Inventory, s: &'a Service) -> &'a str {
    if inv.swarm() {
        inv.managers()
            .first()
            .map(|h| h.name.as_str())
            .unwrap_or(&s.host)
    } else {
        &s.host
    }
}

/// `provision logs [SERVICE...]`: one service's lines as they are; several
/// (or all) merged as they arrive, each line prefixed `host/service | `.
/// With `follow` it streams until Ctrl-C, then exits 0.
pub(super) async fn logs(inv: &Inventory, names: &[String], opts: LogsOptions) -> i32 {
    let services = match pick(inv, names) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let prefixed = services.len() != 1;
    let conns = connect_hosts(inv, &services).await;
    let mut code = EXIT_OK;
    let mut streams = Vec::new();
    for s in &services {
        let transport = match &conns
            .iter()
            .find(|(h, _)| h == where_logs(inv, s))
            .expect("connected")
            .1
        {
            Ok(t) => t.clone(),
            Err(e) => {
                // The message names the host already.
                eprintln!("{}: {e}", s.name);
                code = EXIT_FAILED;
                continue;
            }
        };
        let container = plan::container_name(&inv.project.name, &s.name);
        let (label, line) = if inv.swarm() {
            let name = crate::runtime::swarm::service_name(&inv.project.name, &s.name);
            (
                s.name.clone(),
                commands::shell(&commands::service_logs(&name, &opts)),
            )
        } else {
            (
                format!("{}/{}", s.host, s.name),
                commands::shell(&commands::logs(&container, &opts)),
            )
        };
        let prefix = if prefixed {
            format!("{label} | ")
        } else {
            String::new()
        };
        let mut req = Exec::new(line)
            .capture(false)
            .on_line(move |stream, line| match stream {
                Stream::Stdout => println!("{prefix}{line}"),
                Stream::Stderr => eprintln!("{prefix}{line}"),
            });
        // Following has no end of its own: Ctrl-C ends it.
        req.timeout = None;
        streams.push(async move {
            match transport.exec(req).await {
                Ok(o) if o.success() => EXIT_OK,
                Ok(o) => {
                    eprintln!(
                        "{label}: docker logs exited {} (is the service provisioned?)",
                        o.status.map_or("on a signal".into(), |c| c.to_string())
                    );
                    EXIT_FAILED
                }
                Err(e) => {
                    eprintln!("{label}: {e}");
                    EXIT_FAILED
                }
            }
        });
    }
    let all = join_all(streams);
    let codes = if opts.follow {
        tokio::select! {
            codes = all => codes,
            _ = tokio::signal::ctrl_c() => return code,
        }
    } else {
        all.await
    };
    codes.into_iter().fold(code, i32::max)
}

/// `provision exec SERVICE [-i] -- CMD...`: the command runs in the
/// service's container on its host; its stdout reaches ours byte for byte,
/// its exit status is ours.
pub(super) async fn exec(
    inv: &Inventory,
    service: &str,
    interactive: bool,
    tty: bool,
    cmd: &[String],
) -> i32 {
    let s = match pick(inv, &[service.to_string()]) {
        Ok(s) => s[0],
        Err(code) => return code,
    };
    if tty {
        // provision's transport opens no PTY on its channels: OpenSSH's
        // client gives the command a terminal, with the same settings.
        let container = plan::container_name(&inv.project.name, &s.name);
        return super::ssh::exec_tty(inv, &s.host, &container, cmd);
    }
    let container = plan::container_name(&inv.project.name, &s.name);
    let (transport, line) = if inv.swarm() {
        let name = crate::runtime::swarm::service_name(&inv.project.name, &s.name);
        match swarm_task_host(inv, s).await {
            Ok(t) => (t, commands::exec_in_task(&name, interactive, cmd)),
            Err(code) => return code,
        }
    } else {
        let line = commands::shell(&commands::exec(&container, interactive, false, cmd));
        let opened = session::connect(inv, &[s.host.as_str()]).await;
        match opened.into_iter().next().map(|o| o.transport) {
            Some(Ok(t)) => (t, line),
            Some(Err(e)) => {
                // The message names the host already.
                eprintln!("error: {}: {e}", s.name);
                return EXIT_FAILED;
            }
            None => return EXIT_FAILED,
        }
    };
    let mut req = Exec::new(line)
        .capture(false)
        .stdout_to(Box::new(tokio::io::stdout()))
        .on_line(|_, line| eprintln!("{line}"));
    if interactive {
        req = req.stdin_reader(Box::new(stdin_stream()));
    }
    // A shell or a console has no deadline of its own.
    req.timeout = None;
    let out = transport.exec(req).await;
    let _ = tokio::io::stdout().flush().await;
    match out {
        Ok(o) => match o.status {
            Some(c) => c as i32,
            None => {
                eprintln!(
                    "error: {}/{}: the command was killed by signal {}",
                    s.host,
                    s.name,
                    o.signal.as_deref().unwrap_or("?")
                );
                EXIT_FAILED
            }
        },
        Err(e) => {
            eprintln!("error: {}/{}: {e}", s.host, s.name);
            EXIT_FAILED
        }
    }
}

/// Swarm mode: a node that runs a task of `s` (its pinned node, else the
/// first in hosts.toml's order that runs one), asked of every node at once.
async fn swarm_task_host(inv: &Inventory, s: &Service) -> Result<Arc<dyn Transport>, i32> {
    let name = crate::runtime::swarm::service_name(&inv.project.name, &s.name);
    let hosts: Vec<&str> = if s.pinned {
        vec![s.host.as_str()]
    } else {
        inv.hosts.iter().map(|h| h.name.as_str()).collect()
    };
    let find = commands::shell(&commands::task_containers(&name));
    let opened = session::connect(inv, &hosts).await;
    let asked = join_all(opened.into_iter().map(|o| {
        let find = find.clone();
        async move {
            let t = o.transport.ok()?;
            let out = t.exec(Exec::new(find)).await.ok()?;
            (out.success() && !out.stdout_str().trim().is_empty()).then_some(t)
        }
    }))
    .await;
    match asked.into_iter().flatten().next() {
        Some(t) => Ok(t),
        None => {
            eprintln!(
                "error: no running task of {} found on {}",
                s.name,
                hosts.join(", ")
            );
            Err(EXIT_FAILED)
        }
    }
}

/// This process's stdin as a stream, read on a thread of its own: tokio's
/// stdin reads on the runtime's blocking pool, and a runtime does not shut
/// down while a read of a terminal waits for a key (the command has ended,
/// provision would not). At EOF the stream ends, so the command sees EOF.
fn stdin_stream() -> tokio::io::DuplexStream {
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            // The in-memory pipe needs no reactor: any executor drives it.
            if futures::executor::block_on(writer.write_all(&buf[..n])).is_err() {
                break;
            }
        }
        let _ = futures::executor::block_on(writer.shutdown());
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        crate::inventory::fixture(
            "",
            r#"
[hosts.web]
address = "10.0.0.10"

[hosts.db]
address = "10.0.0.11"

[services.postgis]
host = "db"
template = "postgis"

[services.rails]
host = "web"
template = "rails"
"#,
        )
    }

    fn names(picked: &[&Service]) -> Vec<String> {
        picked
            .iter()
            .map(|s| format!("{}/{}", s.host, s.name))
            .collect()
    }

    #[test]
    fn no_name_picks_every_service_and_names_keep_their_order_once() {
        let inv = inventory();
        assert_eq!(
            names(&pick(&inv, &[]).unwrap()),
            ["db/postgis", "web/rails"]
        );
        let asked = ["rails".to_string(), "postgis".into(), "rails".into()];
        assert_eq!(
            names(&pick(&inv, &asked).unwrap()),
            ["web/rails", "db/postgis"]
        );
    }

    #[test]
    fn an_unknown_service_is_an_input_error() {
        let inv = inventory();
        let asked = ["rails".to_string(), "nosuch".into()];
        assert_eq!(pick(&inv, &asked).err(), Some(EXIT_BAD_INPUT));
    }
}

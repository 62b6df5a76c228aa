//! The host probe through Docker's API socket, reached over the SSH
//! connection itself (a direct-streamlocal channel): no process starts on
//! the host for the Docker queries, so a no-op run costs about one round
//! trip per query. A sudo user may not open root's socket: their queries go
//! through one `sudo docker system dial-stdio` relay, in turn. Hosts where
//! neither works (forwarding disabled, a sudo that asks for a password,
//! Docker missing) are probed with commands instead.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::commands::{self, PROJECT_LABEL, SECRETS_LABEL, SPEC_LABEL};
use crate::transport::{Exec, Transport};

pub const SOCKET: &str = "/var/run/docker.sock";

/// How long one API call may take, connecting included. The calls are
/// small queries; a socket that takes longer is hung (a wedged daemon), and
/// waiting for it would hang the run.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Why a call gave no answer.
enum CallError {
    /// The API cannot be used here (no socket, forwarding refused, an HTTP
    /// error): the caller may fall back to commands.
    Unusable(String),
    /// No answer within [`CALL_DEADLINE`]: the message names the host and
    /// the call.
    Hung(String),
}

impl CallError {
    fn message(self) -> String {
        match self {
            CallError::Unusable(m) | CallError::Hung(m) => m,
        }
    }
}

/// One GET on the API at `socket` on the host behind `t`; `Ok(None)` for a
/// 404. Bounded by [`CALL_DEADLINE`].
pub async fn get_at(t: &dyn Transport, socket: &str, path: &str) -> Result<Option<Value>, String> {
    let api = Api {
        t,
        socket,
        relayed: false,
        kept: tokio::sync::Mutex::new(None),
    };
    api.get(path).await.map_err(CallError::message)
}

/// One HTTP/1.1 connection to the API: its sender, and the task driving it
/// (ended when this is dropped, also when a deadline drops a call midway).
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop<()>,
}

async fn connect(t: &dyn Transport, socket: &str) -> Result<(Connection, bool), String> {
    let opened = t
        .unix_stream(socket)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no socket stream")?;
    let io = hyper_util::rt::TokioIo::new(opened.stream);
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| format!("docker API: {e}"))?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    Ok((
        Connection {
            sender,
            _driver: driver,
        },
        opened.relayed,
    ))
}

impl Connection {
    /// One request and its whole answer: status and body.
    async fn send(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("docker API: {e}"))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("docker API: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("docker API: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// The API of one host for the calls of one probe. Over channels of the SSH
/// connection every call has a stream of its own, and they run at the same
/// time. Through a relay (a sudo user's `sudo docker system dial-stdio`)
/// each stream is a process on the host: the calls take turns on one.
struct Api<'a> {
    t: &'a dyn Transport,
    socket: &'a str,
    relayed: bool,
    /// Relayed: the one connection. Direct: the connection [`Api::open`]
    /// made, for the next call to use rather than open another.
    kept: tokio::sync::Mutex<Option<Connection>>,
}

impl<'a> Api<'a> {
    /// Connects once, to learn how streams are opened on this host.
    async fn open(t: &'a dyn Transport, socket: &'a str) -> Result<Api<'a>, CallError> {
        let connected = tokio::time::timeout(CALL_DEADLINE, connect(t, socket)).await;
        let (conn, relayed) = match connected {
            Ok(r) => r.map_err(CallError::Unusable)?,
            Err(_) => return Err(hung(t, socket, "a stream")),
        };
        Ok(Api {
            t,
            socket,
            relayed,
            kept: tokio::sync::Mutex::new(Some(conn)),
        })
    }

    /// One GET; `Ok(None)` for a 404. Bounded by [`CALL_DEADLINE`], waiting
    /// for a relay's turn included.
    async fn get(&self, path: &str) -> Result<Option<Value>, CallError> {
        match tokio::time::timeout(CALL_DEADLINE, self.get_unbounded(path)).await {
            Ok(r) => r.map_err(CallError::Unusable),
            Err(_) => Err(hung(self.t, self.socket, path)),
        }
    }

    async fn get_unbounded(&self, path: &str) -> Result<Option<Value>, String> {
        let req = hyper::Request::get(path)
            .header("Host", "docker")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = if self.relayed {
            let mut kept = self.kept.lock().await;
            kept.as_mut().ok_or("no socket stream")?.send(req).await?
        } else {
            let spare = self.kept.lock().await.take();
            let mut conn = match spare {
                Some(c) => c,
                None => connect(self.t, self.socket).await?.0,
            };
            conn.send(req).await?
        };
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("docker API {path}: {status}"));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("docker API {path}: {e}"))
    }
}

/// `what`: a call's path (its query left out), or what else was waited for.
fn hung(t: &dyn Transport, socket: &str, what: &str) -> CallError {
    let what = match what.strip_prefix('/') {
        Some(_) => format!("GET {}", what.split('?').next().unwrap_or(what)),
        None => what.to_string(),
    };
    CallError::Hung(format!(
        "{}: Docker API {what} on {socket}: no answer within {} s (is the Docker daemon hung?)",
        t.name(),
        CALL_DEADLINE.as_secs_f32()
    ))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn label_filter(project: &str) -> String {
    let f = format!("{{\"label\":[\"{PROJECT_LABEL}={project}\"]}}");
    utf8_percent_encode(&f, NON_ALPHANUMERIC).to_string()
}

/// The probe's text (the format [`crate::probe::HostState::parse`] reads);
/// `Ok(None)` when the API cannot be used on this host (the caller probes
/// with commands), `Err` when a call or the extras command got no answer
/// within its deadline (a hung daemon: commands would hang as well).
/// `extras`: [`commands::probe_extras`]'s output when another command (the
/// lock's) ran it; it is run here when that gives none.
pub async fn probe(
    t: &dyn Transport,
    project: &str,
    bases: &[String],
    swarm: bool,
    extras: Option<tokio::sync::oneshot::Receiver<Option<String>>>,
) -> Result<Option<String>, String> {
    let filter = label_filter(project);
    let api = match Api::open(t, SOCKET).await {
        Ok(api) => api,
        Err(CallError::Hung(m)) => return Err(m),
        Err(CallError::Unusable(_)) => return Ok(None),
    };
    let version = match api.get("/version").await {
        Ok(Some(v)) => match v["Version"].as_str() {
            Some(v) => v.to_string(),
            None => return Ok(None),
        },
        Err(CallError::Hung(m)) => return Err(m),
        _ => return Ok(None),
    };
    let images_path = format!("/images/json?filters={filter}");
    let containers_path = format!("/containers/json?all=1&filters={filter}");
    let networks_path = format!("/networks?filters={filter}");
    // What the API does not know (the firewall chain, failed pulls, the
    // host's clock) comes from one small command, at the same time.
    let given = extras;
    let extras = async {
        if let Some(rx) = given {
            if let Ok(Some(text)) = rx.await {
                return Ok(Some(text));
            }
        }
        let rest = Exec::new(commands::probe_extras(project))
            .timeout(Duration::from_secs(30))
            .idempotent(true);
        match t.exec(rest).await {
            Ok(o) if o.success() => Ok(Some(o.stdout_str())),
            Err(e @ crate::transport::TransportError::Timeout { .. }) => Err(e.to_string()),
            _ => Ok(None),
        }
    };
    let base_paths: Vec<String> = bases.iter().map(|b| format!("/images/{b}/json")).collect();
    let (images, containers, networks, volumes, extras, base_found, swarm_text) = tokio::join!(
        api.get(&images_path),
        api.get(&containers_path),
        api.get(&networks_path),
        api.get("/volumes"),
        extras,
        futures::future::join_all(base_paths.iter().map(|p| api.get(p))),
        swarm_probe(&api, project, swarm),
    );
    let swarm_text = swarm_text?;
    let base_found = base_found
        .into_iter()
        .map(|r| match r {
            Ok(found) => Ok(found.is_some()),
            Err(CallError::Hung(m)) => Err(m),
            Err(CallError::Unusable(_)) => Ok(false),
        })
        .collect::<Result<Vec<bool>, String>>()?;
    let answer = |r: Result<Option<Value>, CallError>| match r {
        Ok(Some(v)) => Ok(Some(v)),
        Ok(None) | Err(CallError::Unusable(_)) => Ok(None),
        Err(CallError::Hung(m)) => Err(m),
    };
    let (images, containers, networks, volumes) = (
        answer(images)?,
        answer(containers)?,
        answer(networks)?,
        answer(volumes)?,
    );
    let (Some(images), Some(containers), Some(networks), Some(volumes)) =
        (images, containers, networks, volumes)
    else {
        return Ok(None);
    };
    let Some(extras) = extras? else {
        return Ok(None);
    };
    let answers = Answers {
        version,
        images,
        containers,
        networks,
        volumes,
        base_found,
    };
    Ok(answers.render(bases, &format!("{extras}{swarm_text}")))
}

/// The swarm's part of the probe through the API, as the text
/// [`commands::swarm_probe`] prints: asked only of a swarm's nodes, all at
/// once (a worker answers the manager-only calls with an error, ignored).
async fn swarm_probe(api: &Api<'_>, project: &str, swarm: bool) -> Result<String, String> {
    if !swarm {
        return Ok(String::new());
    }
    let stack = format!("{{\"label\":[\"com.docker.stack.namespace={project}\"]}}");
    let services_path = format!(
        "/services?filters={}",
        utf8_percent_encode(&stack, NON_ALPHANUMERIC)
    );
    let (info, nodes, services, secrets, configs) = tokio::join!(
        api.get("/info"),
        api.get("/nodes"),
        api.get(&services_path),
        api.get("/secrets"),
        api.get("/configs"),
    );
    let ok = |r: Result<Option<Value>, CallError>| match r {
        Ok(v) => Ok(v.unwrap_or(Value::Null)),
        Err(CallError::Hung(m)) => Err(m),
        Err(CallError::Unusable(_)) => Ok(Value::Null),
    };
    let info = ok(info)?;
    let sw = &info["Swarm"];
    let manager = sw["ControlAvailable"].as_bool().unwrap_or(false);
    let mut out = format!(
        "@swarm {} {manager}\n@swarm-managers\n",
        sw["LocalNodeState"].as_str().unwrap_or("inactive")
    );
    for m in sw["RemoteManagers"].as_array().into_iter().flatten() {
        out.push_str(m["Addr"].as_str().unwrap_or_default());
        out.push('\n');
    }
    if !manager {
        return Ok(out);
    }
    out.push_str("@swarm-nodes\n");
    for n in ok(nodes)?.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} {} {} {} {}\n",
            n["ID"].as_str().unwrap_or("-"),
            n["Status"]["Addr"].as_str().unwrap_or("-"),
            n["Status"]["State"].as_str().unwrap_or("-"),
            n["ManagerStatus"]["Addr"].as_str().unwrap_or("-"),
            n["Spec"]["Labels"]["provision.host"]
                .as_str()
                .unwrap_or_default(),
        ));
    }
    out.push_str("@swarm-services\n");
    for v in ok(services)?.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} {}\n",
            v["Spec"]["Name"].as_str().unwrap_or("-"),
            v["Spec"]["Labels"][SPEC_LABEL].as_str().unwrap_or_default(),
        ));
    }
    out.push_str("@swarm-objects\n");
    for (kind, list) in [("secret", ok(secrets)?), ("config", ok(configs)?)] {
        for o in list.as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{kind} {}\n",
                o["Spec"]["Name"].as_str().unwrap_or("-")
            ));
        }
    }
    Ok(out)
}

/// What the API said for one probe.
struct Answers {
    version: String,
    images: Value,
    containers: Value,
    networks: Value,
    volumes: Value,
    /// One per base image asked for: whether the host has it.
    base_found: Vec<bool>,
}

impl Answers {
    /// The probe's text; `None` when an answer is not of the expected shape.
    fn render(&self, bases: &[String], extras: &str) -> Option<String> {
        let Answers {
            version,
            images,
            containers,
            networks,
            volumes,
            base_found,
        } = self;
        let mut out = format!("@docker {version}\n@images\n");
        for img in images.as_array()? {
            for tag in img["RepoTags"].as_array().into_iter().flatten() {
                out.push_str(tag.as_str().unwrap_or_default());
                out.push('\n');
            }
        }
        out.push_str("@containers\n");
        for c in containers.as_array()? {
            let name = c["Names"][0]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/');
            let state = c["State"].as_str().unwrap_or_default();
            let spec = c["Labels"][SPEC_LABEL].as_str().unwrap_or_default();
            let secrets = c["Labels"][SECRETS_LABEL].as_str().unwrap_or_default();
            out.push_str(&format!("{name}\t{state}\t{spec}\t{secrets}\n"));
        }
        out.push_str("@networks\n");
        for n in networks.as_array()? {
            out.push_str(n["Name"].as_str().unwrap_or_default());
            out.push('\n');
        }
        out.push_str("@volumes\n");
        for v in volumes["Volumes"].as_array().into_iter().flatten() {
            out.push_str(v["Name"].as_str().unwrap_or_default());
            out.push('\n');
        }
        out.push_str("@bases\n");
        for (b, found) in bases.iter().zip(base_found) {
            if *found {
                out.push_str(b);
                out.push('\n');
            }
        }
        out.push_str(extras);
        Some(out)
    }
}

/// One POST of a JSON body on the API socket of the host behind `t`.
/// `Err`: the API cannot be used there (the caller may fall back to
/// commands); `Ok(Err)`: Docker refused, with its message.
pub async fn post_json(
    t: &dyn Transport,
    path: &str,
    body: &Value,
    deadline: Duration,
) -> Result<Result<(), String>, String> {
    let request = async {
        let req = hyper::Request::post(path)
            .header("Host", "docker")
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let (status, text) = connect(t, SOCKET).await?.0.send(req).await?;
        if status.is_success() {
            return Ok(Ok(()));
        }
        let message = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_string());
        Ok(Err(message))
    };
    match tokio::time::timeout(deadline, request).await {
        Ok(r) => r,
        Err(_) => Ok(Err(format!(
            "Docker API POST {path}: no answer within {} s",
            deadline.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_filter_is_url_encoded_json() {
        assert_eq!(
            label_filter("p"),
            "%7B%22label%22%3A%5B%22provision%2Eproject%3Dp%22%5D%7D"
        );
    }
}

//! The host probe through Docker's API socket, reached over the SSH
//! connection itself (a direct-streamlocal channel): no process starts on
//! the host for the Docker queries, so a no-op run costs about one round
//! trip per query. Hosts where that is not possible (a sudo user, forwarding
//! disabled, Docker missing) are probed with commands instead.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::commands::{self, PROJECT_LABEL, SECRETS_LABEL, SPEC_LABEL};
use crate::transport::{Exec, Transport};

pub const SOCKET: &str = "/var/run/docker.sock";

/// One GET on the API socket; `Ok(None)` for a 404.
async fn get(t: &dyn Transport, path: &str) -> Result<Option<Value>, String> {
    get_at(t, SOCKET, path).await
}

/// One GET on the API at `socket` on the host behind `t`; `Ok(None)` for a
/// 404.
pub async fn get_at(t: &dyn Transport, socket: &str, path: &str) -> Result<Option<Value>, String> {
    let stream = t
        .unix_stream(socket)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no socket stream")?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("docker API: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("Host", "docker")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
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
    driver.abort();
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

fn label_filter(project: &str) -> String {
    let f = format!("{{\"label\":[\"{PROJECT_LABEL}={project}\"]}}");
    utf8_percent_encode(&f, NON_ALPHANUMERIC).to_string()
}

/// The probe's text (the format [`crate::probe::HostState::parse`] reads),
/// or `None` when the API cannot be used on this host.
pub async fn probe(t: &dyn Transport, project: &str, bases: &[String]) -> Option<String> {
    let filter = label_filter(project);
    let version = match tokio::time::timeout(Duration::from_secs(10), get(t, "/version")).await {
        Ok(Ok(Some(v))) => v["Version"].as_str()?.to_string(),
        _ => return None,
    };
    let images_path = format!("/images/json?filters={filter}");
    let containers_path = format!("/containers/json?all=1&filters={filter}");
    let networks_path = format!("/networks?filters={filter}");
    // What the API does not know (the firewall chain, failed pulls, the
    // host's clock) comes from one small command, at the same time.
    let rest = Exec::new(commands::probe_extras(project))
        .timeout(Duration::from_secs(30))
        .idempotent(true);
    let base_paths: Vec<String> = bases.iter().map(|b| format!("/images/{b}/json")).collect();
    let (images, containers, networks, volumes, extras, base_found) = tokio::join!(
        get(t, &images_path),
        get(t, &containers_path),
        get(t, &networks_path),
        get(t, "/volumes"),
        t.exec(rest),
        futures::future::join_all(base_paths.iter().map(|p| get(t, p))),
    );
    let (images, containers, networks, volumes) = (
        images.ok()??,
        containers.ok()??,
        networks.ok()??,
        volumes.ok()??,
    );
    let extras = extras.ok().filter(|o| o.success())?.stdout_str();

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
        if matches!(found, Ok(Some(_))) {
            out.push_str(b);
            out.push('\n');
        }
    }
    out.push_str(&extras);
    Some(out)
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

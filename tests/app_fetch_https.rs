//! The app tarball with a token, for real over HTTPS: the test makes its
//! own CA and a certificate for 127.0.0.1, serves the tarball with rustls
//! only to `Authorization: Basic base64(TOKEN:x-oauth-basic)`, and runs the
//! plan's upload and fetch lines through a LocalTransport whose shells
//! trust that CA (`CURL_CA_BUNDLE`, in their environment and not in the
//! line). The token is in no argv, plan text or message; a wrong token and
//! an untrusted certificate fail with messages that say so.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provision::plan::{Action, Plan};
use provision::transport::{Exec, ExecOutput, LocalTransport, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

mod support;

use support::fetch::{cfg_path, fetch_actions, plan_for, request_head, tarball, upload, HostRoot};

const TOKEN: &str = "ghp-https-token-0123456789";
const WRONG: &str = "ghp-wrong-token-9876543210";

/// What the server saw of each request.
#[derive(Default)]
struct Seen {
    authorization: Vec<String>,
    /// Command lines of this machine's processes that held the token
    /// while a request was being answered (curl among them, mid-fetch).
    argv_with_token: Vec<String>,
    /// Whether a curl process was there to look at.
    curl_running: bool,
}

/// An HTTPS server on 127.0.0.1 and the CA that signed its certificate.
struct Https {
    port: u16,
    ca: PathBuf,
    seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
}

impl Https {
    fn url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/acme/app/archive/main.tar.gz",
            self.port
        )
    }

    /// One request came, with `token`'s credentials, while no process's
    /// command line held a token.
    fn sent_once(&self, token: &str) {
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.authorization, vec![basic(token)]);
        assert!(seen.curl_running, "no curl process was seen mid-fetch");
        assert!(
            seen.argv_with_token.is_empty(),
            "the token is in argv: {:?}",
            seen.argv_with_token
        );
    }

    /// A transport whose shells trust this server's CA, as a host would
    /// trust a git host's public one.
    fn trusting(&self) -> LocalTransport {
        LocalTransport::new("host").with_env("CURL_CA_BUNDLE", self.ca.to_str().unwrap())
    }
}

/// The expected `Authorization` header for `token`.
fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{token}:x-oauth-basic").as_bytes())
    )
}

/// Starts serving `body` to requests with `token`'s credentials (401 to
/// others) until the test process ends.
fn serve_https(token: &str) -> Https {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "provision test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let config = Arc::new(config);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (expected, body, seen2) = (basic(token), tarball(), seen.clone());
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            answer(tcp, &config, &expected, &body, &seen2);
        }
    });
    Https {
        port,
        ca,
        seen,
        _dir: dir,
    }
}

/// One connection: the request head, then the tarball or a 401. A client
/// that gives up in the handshake (an untrusted certificate) ends it.
fn answer(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    expected: &str,
    body: &[u8],
    seen: &Mutex<Seen>,
) {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let Some(head) = request_head(&mut tls) else {
        return;
    };
    let authorization = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    {
        let mut seen = seen.lock().unwrap();
        let (with_token, curl) = processes_now();
        seen.argv_with_token.extend(with_token);
        seen.curl_running |= curl;
        seen.authorization.push(authorization.clone());
    }
    let (status, body) = if authorization == expected {
        ("200 OK", body)
    } else {
        ("401 Unauthorized", &b"Bad credentials"[..])
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = tls.write_all(reply.as_bytes());
    let _ = tls.write_all(body);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// `ps -eo args` read from /proc: the command lines holding either token,
/// and whether curl is among this machine's processes.
fn processes_now() -> (Vec<String>, bool) {
    let mut with_token = Vec::new();
    let mut curl = false;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args = String::from_utf8_lossy(&raw).replace('\0', " ");
        curl |= args.starts_with("curl ");
        if args.contains(TOKEN) || args.contains(WRONG) {
            with_token.push(args);
        }
    }
    (with_token, curl)
}

/// Every line and shown text of the plan, as a person or `ps` sees them.
fn plan_texts(plan: &Plan) -> Vec<String> {
    let mut texts = vec![
        provision::plan_output::text(plan, None),
        provision::plan_output::json(plan, None),
    ];
    for step in plan.hosts.iter().flat_map(|h| &h.steps) {
        for a in &step.actions {
            match a {
                Action::Run { line } | Action::Fetch { line, .. } | Action::Script { line, .. } => {
                    texts.push(line.clone())
                }
                Action::Upload { shown, .. } => texts.push(shown.clone()),
                Action::WaitReady { line, .. } => texts.push(line.clone()),
                Action::Relay { image, .. } => texts.push(image.clone()),
                Action::SwarmJoin { remote, .. } => texts.push(remote.clone()),
            }
        }
    }
    texts
}

/// The fetch action's URL and token name, and the message the executor
/// makes of its failure.
fn message(plan: &Plan, out: &ExecOutput) -> String {
    let (url, token) = fetch_actions(plan)
        .into_iter()
        .find_map(|a| match a {
            Action::Fetch { url, token, .. } => Some((url, token)),
            _ => None,
        })
        .unwrap();
    provision::executor::fetch_failure(&url, token.as_deref(), &out.stderr_str(), out.status)
}

async fn fetch(t: &LocalTransport, plan: &Plan, root: &HostRoot) -> ExecOutput {
    let line = upload(t, &fetch_actions(plan), TOKEN).await;
    assert!(!line.contains(WRONG), "{line}");
    assert!(cfg_path(root).exists());
    // The CA is the shell's setting, not the plan's.
    assert!(!line.contains("CURL_CA_BUNDLE"), "{line}");
    t.exec(Exec::new(line).timeout(Duration::from_secs(60)))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_right_token_fetches_the_app_over_https_and_shows_nowhere() {
    let server = serve_https(TOKEN);
    let (plan, root, _dir) = plan_for("https-ok", &server.url(), Some(TOKEN));
    for text in plan_texts(&plan) {
        assert!(!text.contains(TOKEN), "the token is in the plan: {text}");
    }

    let out = fetch(&server.trusting(), &plan, &root).await;
    assert_eq!(out.status, Some(0), "{}", out.stderr_str());
    let app = root.0.join("build/rails/app");
    assert_eq!(
        std::fs::read_to_string(app.join("Gemfile")).unwrap(),
        "gem 'rails'\n"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("config/app.yml")).unwrap(),
        "x: 1\n"
    );
    assert!(!cfg_path(&root).exists(), "the 0600 curl config is left");
    assert!(!root.0.join("build/rails/app.tar.gz").exists());

    server.sent_once(TOKEN);
}

#[tokio::test]
async fn a_wrong_token_fails_naming_the_url_and_the_secret_not_the_token() {
    let server = serve_https(TOKEN);
    let (plan, root, _dir) = plan_for("https-wrong", &server.url(), Some(WRONG));
    let out = fetch(&server.trusting(), &plan, &root).await;
    assert_eq!(out.status, Some(22), "{}", out.stderr_str());
    let msg = message(&plan, &out);
    assert_eq!(
        msg,
        format!(
            "fetching the app from {} failed: HTTP 401: the token REPO_TOKEN was refused",
            server.url()
        )
    );
    for text in [&msg, &out.stderr_str(), &out.stdout_str()] {
        assert!(!text.contains(WRONG) && !text.contains(TOKEN), "{text}");
    }
    assert!(!cfg_path(&root).exists(), "the 0600 curl config is left");
    assert!(!root.0.join("build/rails/app").exists());
    server.sent_once(WRONG);
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_not_trusted() {
    let server = serve_https(TOKEN);
    let (plan, root, _dir) = plan_for("https-untrusted", &server.url(), Some(TOKEN));
    // The system's CAs only: the test's CA is not among them.
    let out = fetch(&LocalTransport::new("host"), &plan, &root).await;
    assert_eq!(out.status, Some(60), "{}", out.stderr_str());
    let msg = message(&plan, &out);
    assert!(
        msg.starts_with(&format!(
            "fetching the app from {} failed: the server's certificate is not trusted (curl: ",
            server.url()
        )),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN), "{msg}");
    assert!(!cfg_path(&root).exists(), "the 0600 curl config is left");
    // The token never left this machine: no request got through.
    assert!(server.seen.lock().unwrap().authorization.is_empty());
}

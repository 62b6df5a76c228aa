//! Reads hosts.toml into an [`Inventory`], collecting every problem found
//! (not only the first) with its line, column and key path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::*;
use crate::diagnostics::{suggest, Collector, Diagnostic};

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["project", "app", "secrets", "hosts", "services", "data"];
const PROJECT_KEYS: &[&str] = &["name", "mode", "state_dir", "secrets_file", "known_hosts"];
const APP_KEYS: &[&str] = &["source", "token", "include"];
const SECRET_KEYS: &[&str] = &["generate"];
const HOST_KEYS: &[&str] = &[
    "address",
    "private_address",
    "port",
    "user",
    "identity",
    "passphrase_env",
    "host_key",
    "sudo",
    "docker",
    "machine",
    "init",
    "forward",
    "cpus",
    "role",
];
const SERVICE_KEYS: &[&str] = &[
    "host",
    "template",
    "base",
    "vars",
    "publish",
    "volumes",
    "volumes_from",
    "env",
    "secrets",
    "uses",
    "after",
    "logs_to",
    "public",
    "ready_timeout",
    "replace",
    "replicas",
];
const DATA_KEYS: &[&str] = &["host", "paths"];

/// Parse and validate hosts.toml. `file` is used in messages and to resolve
/// relative paths; nothing else is read here.
pub fn parse(file: &Path, source: &str) -> Result<Inventory, Vec<Diagnostic>> {
    let mut r = Reader {
        c: Collector::new(file, source),
        spans: HashMap::new(),
        mode: Mode::Plain,
    };
    let doc = match DeTable::parse(source) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            r.c.error(span, "", format!("invalid TOML: {}", e.message().trim()));
            return Err(r.c.items);
        }
    };
    let root = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let top = doc.get_ref();
    r.check_keys(top, "", TOP_KEYS);

    let project = r.project(top.get("project"), &root);
    r.mode = project.mode;
    let (app, app_include) = r.app(top.get("app"));
    let secrets = r.secrets(top.get("secrets"));
    let hosts = r.hosts(top.get("hosts"), doc.span());
    let data = r.data(top.get("data"));
    let mut services = r.services(top.get("services"), doc.span());
    // An unpinned swarm service is planned from the first manager.
    let first_manager = hosts
        .iter()
        .find(|h| h.role == Some(Role::Manager))
        .or(hosts.first())
        .map(|h| h.name.clone())
        .unwrap_or_default();
    for s in services.iter_mut().filter(|s| !s.pinned) {
        s.host = first_manager.clone();
    }

    let mut inv = Inventory {
        file: file.to_path_buf(),
        root,
        source: source.to_string(),
        project,
        app,
        app_include,
        secrets,
        hosts,
        services,
        data,
        spans: HashMap::new(),
    };
    inv.spans = std::mem::take(&mut r.spans);
    cross_checks(&inv, &mut r.c);
    if r.c.is_empty() {
        Ok(inv)
    } else {
        Err(r.c.items)
    }
}

struct Reader<'s> {
    c: Collector<'s>,
    spans: HashMap<String, Range<usize>>,
    /// The project's mode, read first: some keys exist only in swarm mode.
    mode: Mode,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &DeValue) -> &'static str {
    v.type_str()
}

impl<'s> Reader<'s> {
    fn check_keys(&mut self, t: &DeTable, path: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                let key = k.get_ref().as_ref();
                let where_ = if path.is_empty() {
                    "the top level".to_string()
                } else {
                    format!("[{path}]")
                };
                let msg = format!("unknown key `{key}` in {where_}");
                match suggest(key, allowed.iter().copied()) {
                    Some(h) => self.c.error_with_hint(k.span(), join(path, key), msg, h),
                    None => self.c.error_with_hint(
                        k.span(),
                        join(path, key),
                        msg,
                        format!("allowed keys: {}", allowed.join(", ")),
                    ),
                }
            }
        }
    }

    fn record(&mut self, path: &str, span: Range<usize>) {
        self.spans.insert(path.to_string(), span);
    }

    fn table<'a, 'i>(&mut self, v: &'a Value<'i>, path: &str) -> Option<&'a DeTable<'i>> {
        self.record(path, v.span());
        match v.get_ref().as_table() {
            Some(t) => Some(t),
            None => {
                self.c.error(
                    v.span(),
                    path,
                    format!("expected a table, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    fn string(&mut self, t: &DeTable, key: &str, path: &str) -> Option<String> {
        let v = t.get(key)?;
        let p = join(path, key);
        self.record(&p, v.span());
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.c.error(
                    v.span(),
                    p,
                    format!("expected a string, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    fn nonempty_string(&mut self, t: &DeTable, key: &str, path: &str) -> Option<String> {
        let s = self.string(t, key, path)?;
        if s.trim().is_empty() {
            let p = join(path, key);
            self.c.error(self.spans[&p].clone(), p, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, t: &DeTable, key: &str, path: &str) -> Option<bool> {
        let v = t.get(key)?;
        let p = join(path, key);
        self.record(&p, v.span());
        match v.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.c.error(
                    v.span(),
                    p,
                    format!("expected true or false, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    /// `replace = "start-first" | "stop-first"`.
    fn replace(&mut self, t: &DeTable, path: &str) -> Option<crate::templates::Replace> {
        let v = self.string(t, "replace", path)?;
        let p = join(path, "replace");
        match v.as_str() {
            "start-first" => Some(crate::templates::Replace::StartFirst),
            "stop-first" => Some(crate::templates::Replace::StopFirst),
            other => {
                self.c.error_with_hint(
                    self.spans[&p].clone(),
                    p,
                    format!("unknown replacement `{other}`"),
                    "use \"start-first\" (the new container beside the old one, switched to once ready) or \"stop-first\"",
                );
                None
            }
        }
    }

    /// A number of seconds, 1 to 3600.
    fn seconds(&mut self, t: &DeTable, key: &str, path: &str) -> Option<u64> {
        let n = self.bounded(
            t,
            key,
            path,
            1..=3600,
            |n| format!("{n} s is out of range 1-3600"),
            "a number of seconds from 1 to 3600",
        )?;
        Some(n as u64)
    }

    /// `cpus = 1` or `cpus = 1.5`: more than 0, at most 1024, in steps of
    /// 0.01 (what Docker's `--cpus` takes).
    fn cpus(&mut self, t: &DeTable, path: &str) -> Option<Cpus> {
        let v = t.get("cpus")?;
        let p = join(path, "cpus");
        self.record(&p, v.span());
        let value = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            other => {
                self.c.error_with_hint(
                    v.span(),
                    p,
                    format!("expected a number of CPUs, found {}", type_name(other)),
                    "e.g. cpus = 1 or cpus = 1.5",
                );
                return None;
            }
        };
        let hundredths = value.map(|x| x * 100.0).filter(|h| h.is_finite());
        match hundredths {
            Some(h) if (1.0..=102_400.0).contains(&h.round()) && (h - h.round()).abs() < 1e-6 => {
                Some(Cpus(h.round() as u32))
            }
            _ => {
                self.c.error_with_hint(
                    v.span(),
                    p,
                    format!(
                        "{} CPUs is not a share Docker can give",
                        value.map_or("this".into(), |x| x.to_string())
                    ),
                    "a number from 0.01 to 1024 with at most two decimals, e.g. cpus = 1",
                );
                None
            }
        }
    }

    fn port(&mut self, t: &DeTable, key: &str, path: &str) -> Option<u16> {
        let n = self.bounded(
            t,
            key,
            path,
            1..=65535,
            |n| format!("port {n} is out of range 1-65535"),
            "a port number",
        )?;
        Some(n as u16)
    }

    /// An integer in `range`; out of it, the message `out(n)`; not an
    /// integer, "expected WHAT".
    fn bounded(
        &mut self,
        t: &DeTable,
        key: &str,
        path: &str,
        range: std::ops::RangeInclusive<i64>,
        out: impl Fn(i64) -> String,
        what: &str,
    ) -> Option<i64> {
        let v = t.get(key)?;
        let p = join(path, key);
        self.record(&p, v.span());
        let n = v
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match n {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                self.c.error(v.span(), p, out(n));
                None
            }
            None => {
                self.c.error(
                    v.span(),
                    p,
                    format!("expected {what}, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    /// An array of strings; each element's span is recorded as `path[i]`.
    fn strings(&mut self, t: &DeTable, key: &str, path: &str) -> Vec<(String, Range<usize>)> {
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        let p = join(path, key);
        self.record(&p, v.span());
        let Some(items) = v.get_ref().as_array() else {
            self.c.error(
                v.span(),
                p,
                format!(
                    "expected an array of strings, found {}",
                    type_name(v.get_ref())
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            self.record(&ip, item.span());
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), item.span())),
                None => self.c.error(
                    item.span(),
                    ip,
                    format!("expected a string, found {}", type_name(item.get_ref())),
                ),
            }
        }
        out
    }

    fn name(&mut self, key: &Spanned<std::borrow::Cow<str>>, path: &str, what: &str) -> bool {
        let name = key.get_ref().as_ref();
        let ok = valid_name(name);
        if !ok {
            self.c.error_with_hint(
                key.span(),
                path,
                format!("invalid {what} name `{name}`"),
                "names use only lowercase letters, digits and `-`, and start with a letter or digit",
            );
        }
        ok
    }

    fn project(&mut self, v: Option<&Value>, root: &Path) -> Project {
        let defaults = |name: String| Project {
            name,
            mode: Mode::Plain,
            state_dir: root.join(".provision"),
            secrets_file: root.join(".provision/secrets.env"),
            known_hosts: root.join(".provision/known_hosts"),
        };
        let Some(v) = v else {
            return defaults("provision".into());
        };
        let Some(t) = self.table(v, "project") else {
            return defaults("provision".into());
        };
        self.check_keys(t, "project", PROJECT_KEYS);
        let name = match self.string(t, "name", "project") {
            Some(n) if valid_name(&n) => n,
            Some(n) => {
                self.c.error_with_hint(
                    self.spans["project.name"].clone(),
                    "project.name",
                    format!("invalid project name `{n}`"),
                    "names use only lowercase letters, digits and `-`",
                );
                "provision".into()
            }
            None => "provision".into(),
        };
        let mut p = defaults(name);
        if let Some(m) = self.string(t, "mode", "project") {
            match m.as_str() {
                "plain" => {}
                "swarm" => p.mode = Mode::Swarm,
                other => self.bad_choice("project.mode", other, &["plain", "swarm"]),
            }
        }
        if let Some(s) = self.nonempty_string(t, "state_dir", "project") {
            p.state_dir = resolve_path(root, &s);
            p.secrets_file = p.state_dir.join("secrets.env");
            p.known_hosts = p.state_dir.join("known_hosts");
        }
        if let Some(s) = self.nonempty_string(t, "secrets_file", "project") {
            p.secrets_file = resolve_path(root, &s);
        }
        if let Some(s) = self.nonempty_string(t, "known_hosts", "project") {
            p.known_hosts = resolve_path(root, &s);
        }
        p
    }

    fn app(&mut self, v: Option<&Value>) -> (AppSource, Vec<String>) {
        let default = AppSource::Folder("examples/rails_app".into());
        let Some(v) = v else {
            return (default, Vec::new());
        };
        let Some(t) = self.table(v, "app") else {
            return (default, Vec::new());
        };
        self.check_keys(t, "app", APP_KEYS);
        let token = self.string(t, "token", "app");
        if let Some(tok) = &token {
            if !valid_secret_name(tok) {
                self.c.error(
                    self.spans["app.token"].clone(),
                    "app.token",
                    format!("invalid secret name `{tok}`: use an environment variable name such as REPO_TOKEN"),
                );
            }
        }
        let include = self.app_include(t);
        let source = match self.nonempty_string(t, "source", "app") {
            Some(s) if s.starts_with("https://") || s.starts_with("http://") => {
                // A URL never holds blanks: one here is a typo, or a value
                // meant to break out of the curl config line.
                if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    self.c.error(
                        self.spans["app.source"].clone(),
                        "app.source",
                        "a URL cannot hold spaces, newlines or control characters (percent-encode them)",
                    );
                }
                if s.starts_with("http://") && token.is_some() {
                    // Anyone on the path would read the token.
                    self.c.error_with_hint(
                        self.spans["app.source"].clone(),
                        "app.source",
                        "a token is never sent over plain http://",
                        "use the https:// URL, or remove `token` if the tarball is public",
                    );
                }
                if !include.is_empty() {
                    self.c.error(
                        self.spans["app.include"].clone(),
                        "app.include",
                        "`include` only applies when the source is a local folder",
                    );
                }
                AppSource::Tarball { url: s, token }
            }
            Some(s) => {
                if token.is_some() {
                    self.c.error(
                        self.spans["app.token"].clone(),
                        "app.token",
                        "a token is only used with a tarball URL source",
                    );
                }
                AppSource::Folder(s.into())
            }
            None => default,
        };
        (source, include)
    }

    /// `[app] include`: private files (`.env.production`, a key) the user
    /// wants sent after all, as `.dockerignore`-style patterns relative to
    /// the app folder.
    fn app_include(&mut self, t: &DeTable) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (raw, span)) in self.strings(t, "include", "app").into_iter().enumerate() {
            let path = format!("app.include[{i}]");
            let text = raw.trim();
            let problem = if text.is_empty() {
                Some("must not be empty".to_string())
            } else if text.starts_with('!') {
                Some("an include names files to send; `!` has no meaning here".to_string())
            } else if text.starts_with('/') {
                Some(format!("`{text}` must be relative to the app folder"))
            } else if text.split('/').any(|part| part == "..") {
                Some(format!(
                    "`{text}` must stay inside the app folder (no `..`)"
                ))
            } else {
                crate::dockerignore::Pattern::new(text, 0)
                    .err()
                    .map(|e| e.message)
            };
            match problem {
                Some(message) => self.c.error_with_hint(
                    span,
                    path,
                    message,
                    "a path or pattern inside the app folder, e.g. \".env.production\" or \"config/credentials/production.key\"",
                ),
                None => out.push(text.to_string()),
            }
        }
        out
    }

    fn secrets(&mut self, v: Option<&Value>) -> Vec<SecretDecl> {
        let Some(v) = v else { return Vec::new() };
        let Some(t) = self.table(v, "secrets") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let path = format!("secrets.{name}");
            self.record(&path, k.span());
            if !valid_secret_name(&name) {
                self.c.error_with_hint(
                    k.span(),
                    &path,
                    format!("invalid secret name `{name}`"),
                    "secret names are environment variable names: A-Z, 0-9 and `_`",
                );
                continue;
            }
            let Some(st) = self.table(v, &path) else {
                continue;
            };
            self.check_keys(st, &path, SECRET_KEYS);
            let generate = self.boolean(st, "generate", &path).unwrap_or(false);
            out.push(SecretDecl { name, generate });
        }
        out
    }

    fn hosts(&mut self, v: Option<&Value>, doc_span: Range<usize>) -> Vec<Host> {
        let Some(v) = v else {
            self.c.error_with_hint(
                doc_span.start..doc_span.start,
                "hosts",
                "no hosts defined",
                "add a [hosts.NAME] table with an address",
            );
            return Vec::new();
        };
        let Some(t) = self.table(v, "hosts") else {
            return Vec::new();
        };
        if t.is_empty() {
            self.c.error(v.span(), "hosts", "no hosts defined");
        }
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let path = format!("hosts.{name}");
            self.record(&path, k.span());
            if !self.name(k, &path, "host") {
                continue;
            }
            let Some(ht) = self.table(v, &path) else {
                continue;
            };
            if let Some(h) = self.host(name, ht, &path, k.span()) {
                out.push(h);
            }
        }
        out
    }

    fn host(&mut self, name: String, t: &DeTable, path: &str, span: Range<usize>) -> Option<Host> {
        self.check_keys(t, path, HOST_KEYS);
        let address = self.nonempty_string(t, "address", path);
        if address.is_none() && t.get("address").is_none() {
            self.c.error_with_hint(
                span.clone(),
                join(path, "address"),
                "missing required key `address`",
                "e.g. address = \"192.168.33.10\"",
            );
        }
        if let Some(a) = &address {
            if a.contains(char::is_whitespace) || a.starts_with('-') {
                let p = join(path, "address");
                self.c
                    .error(self.spans[&p].clone(), p, format!("invalid address `{a}`"));
            }
        }
        let private_address = self.nonempty_string(t, "private_address", path);
        if let Some(a) = &private_address {
            if a.parse::<std::net::IpAddr>().is_err() {
                let p = join(path, "private_address");
                self.c.error_with_hint(
                    self.spans[&p].clone(),
                    p,
                    format!("`{a}` is not an IP address"),
                    "the address the other hosts reach this one at, e.g. private_address = \"10.0.0.5\" or \"fd00::5\"",
                );
            }
        }
        // Left unset, port and user come from ~/.ssh/config when connecting
        // (as for `ssh ADDRESS`), else 22 and root: see `run::login`.
        let port = self.port(t, "port", path);
        let user = self.nonempty_string(t, "user", path);
        if let Some(user) = &user {
            if !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                let p = join(path, "user");
                self.c.error(
                    self.spans[&p].clone(),
                    p,
                    format!("invalid user name `{user}`"),
                );
            }
        }
        let identity = self.nonempty_string(t, "identity", path).map(Into::into);
        let passphrase_env = self.string(t, "passphrase_env", path);
        if let Some(pe) = &passphrase_env {
            if !valid_secret_name(pe) {
                let p = join(path, "passphrase_env");
                self.c.error(
                    self.spans[&p].clone(),
                    p,
                    format!("invalid environment variable name `{pe}`"),
                );
            }
        }
        let host_key = match self.string(t, "host_key", path).as_deref() {
            None | Some("strict") => HostKeyPolicy::Strict,
            Some("accept-new") => HostKeyPolicy::AcceptNew,
            Some("off") => HostKeyPolicy::Off,
            Some(other) => {
                let p = join(path, "host_key");
                self.bad_choice(&p, other, &["strict", "accept-new", "off"]);
                HostKeyPolicy::Strict
            }
        };
        let sudo = self.boolean(t, "sudo", path);
        let docker = match self.string(t, "docker", path).as_deref() {
            None | Some("distro") => DockerSource::Distro,
            Some("upstream") => DockerSource::Upstream,
            Some(other) => {
                let p = join(path, "docker");
                self.bad_choice(&p, other, &["distro", "upstream"]);
                DockerSource::Distro
            }
        };
        let machine_kind = self.string(t, "machine", path);
        let machine = match machine_kind.as_deref() {
            None => {
                for key in ["init", "forward", "cpus"] {
                    if let Some(v) = t.get(key) {
                        self.c.error_with_hint(
                            v.span(),
                            join(path, key),
                            format!("`{key}` only applies to local playground machines"),
                            "add machine = \"local\" to this host",
                        );
                    }
                }
                None
            }
            Some("local") => {
                let init = match self.string(t, "init", path).as_deref() {
                    None | Some("systemd") => Init::Systemd,
                    Some("none") => Init::None,
                    Some(other) => {
                        let p = join(path, "init");
                        self.bad_choice(&p, other, &["systemd", "none"]);
                        Init::Systemd
                    }
                };
                let mut forward = Vec::new();
                for (i, (s, span)) in self.strings(t, "forward", path).into_iter().enumerate() {
                    match parse_port_pair(&s) {
                        Some((host_port, guest_port)) => forward.push(PortForward {
                            host_port,
                            guest_port,
                        }),
                        None => self.c.error_with_hint(
                            span,
                            format!("{path}.forward[{i}]"),
                            format!("invalid forward `{s}`"),
                            "write \"LOCAL:GUEST\", e.g. \"8080:80\"",
                        ),
                    }
                }
                if let Some(a) = &address {
                    if a.parse::<Ipv4Addr>().is_err() {
                        let p = join(path, "address");
                        self.c.error_with_hint(
                            self.spans[&p].clone(),
                            p,
                            format!("a local machine needs an IPv4 address, found `{a}`"),
                            "e.g. address = \"192.168.33.10\"",
                        );
                    }
                }
                let cpus = self.cpus(t, path);
                Some(LocalMachine {
                    init,
                    forward,
                    cpus,
                })
            }
            Some(other) => {
                let p = join(path, "machine");
                self.bad_choice(&p, other, &["local"]);
                None
            }
        };
        let role = match self.string(t, "role", path).as_deref() {
            None => None,
            Some(r) if self.mode != Mode::Swarm => {
                let p = join(path, "role");
                self.c.error_with_hint(
                    self.spans[&p].clone(),
                    p,
                    format!(
                        "`role = \"{r}\"` is a swarm node's role, and this project is not a swarm"
                    ),
                    "add mode = \"swarm\" to [project], or remove this key",
                );
                None
            }
            Some("manager") => Some(Role::Manager),
            Some("worker") => Some(Role::Worker),
            Some(other) => {
                let p = join(path, "role");
                self.bad_choice(&p, other, &["manager", "worker"]);
                None
            }
        };
        Some(Host {
            role,
            name,
            address: address?,
            private_address,
            port,
            user,
            identity,
            passphrase_env,
            host_key,
            sudo,
            docker,
            machine,
        })
    }

    fn bad_choice(&mut self, path: &str, found: &str, choices: &[&str]) {
        let hint = suggest(found, choices.iter().copied()).unwrap_or_else(|| {
            format!(
                "one of {}",
                choices
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        self.c.error_with_hint(
            self.spans[path].clone(),
            path,
            format!("unknown value `{found}`"),
            hint,
        );
    }

    fn data(&mut self, v: Option<&Value>) -> Vec<DataContainer> {
        let Some(v) = v else { return Vec::new() };
        let Some(t) = self.table(v, "data") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let path = format!("data.{name}");
            self.record(&path, k.span());
            if !self.name(k, &path, "data container") {
                continue;
            }
            let Some(dt) = self.table(v, &path) else {
                continue;
            };
            self.check_keys(dt, &path, DATA_KEYS);
            let Some(host) = self.nonempty_string(dt, "host", &path) else {
                if dt.get("host").is_none() {
                    self.c
                        .error(k.span(), join(&path, "host"), "missing required key `host`");
                }
                continue;
            };
            let mut paths = Vec::new();
            for (i, (p, span)) in self.strings(dt, "paths", &path).into_iter().enumerate() {
                if !p.starts_with('/') {
                    self.c.error(
                        span,
                        format!("{path}.paths[{i}]"),
                        format!("`{p}` must be an absolute path in the container"),
                    );
                } else if p.contains('\0') {
                    self.c.error(
                        span,
                        format!("{path}.paths[{i}]"),
                        "a container path cannot hold a NUL character",
                    );
                }
                paths.push(p);
            }
            if paths.is_empty() {
                self.c.error(
                    k.span(),
                    join(&path, "paths"),
                    "a data container needs at least one path",
                );
            }
            out.push(DataContainer { name, host, paths });
        }
        out
    }

    fn services(&mut self, v: Option<&Value>, doc_span: Range<usize>) -> Vec<Service> {
        let Some(v) = v else {
            self.c.error_with_hint(
                doc_span.start..doc_span.start,
                "services",
                "no services defined",
                "add a [services.NAME] table with a host and a template",
            );
            return Vec::new();
        };
        let Some(t) = self.table(v, "services") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let path = format!("services.{name}");
            self.record(&path, k.span());
            if !self.name(k, &path, "service") {
                continue;
            }
            let Some(st) = self.table(v, &path) else {
                continue;
            };
            if let Some(s) = self.service(name, st, &path, k.span()) {
                out.push(s);
            }
        }
        out
    }

    fn service(
        &mut self,
        name: String,
        t: &DeTable,
        path: &str,
        span: Range<usize>,
    ) -> Option<Service> {
        self.check_keys(t, path, SERVICE_KEYS);
        let host = self.nonempty_string(t, "host", path);
        let pinned = host.is_some();
        let host = if self.mode == Mode::Swarm && t.get("host").is_none() {
            Some(String::new())
        } else {
            host
        };
        if t.get("host").is_none() && self.mode != Mode::Swarm {
            self.c.error_with_hint(
                span.clone(),
                join(path, "host"),
                "missing required key `host`",
                "place the service on a host: host = \"NAME\"",
            );
        }
        // The built-in templates are the folders shipped in `templates/`.
        let builtins = crate::templates::builtin_names();
        let template_name = self.nonempty_string(t, "template", path);
        let base = self.nonempty_string(t, "base", path);
        let template = match template_name {
            None => {
                if t.get("template").is_none() && builtins.contains(&name.as_str()) {
                    TemplateRef::Builtin(name.clone())
                } else {
                    if t.get("template").is_none() {
                        self.c.error_with_hint(
                            span.clone(),
                            join(path, "template"),
                            "missing required key `template`",
                            format!("a built-in template ({}) or a folder such as \"./templates-local/app\"", builtins.join(", ")),
                        );
                    }
                    TemplateRef::Builtin(String::new())
                }
            }
            Some(t) if t.contains('/') => TemplateRef::Folder {
                path: t.into(),
                base: base.clone(),
            },
            Some(t) => {
                if !builtins.contains(&t.as_str()) {
                    let p = join(path, "template");
                    let hint = suggest(&t, builtins.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "built-in templates: {}; a folder of your own starts with ./",
                            builtins.join(", ")
                        )
                    });
                    self.c.error_with_hint(
                        self.spans[&p].clone(),
                        p,
                        format!("unknown template `{t}`"),
                        hint,
                    );
                }
                TemplateRef::Builtin(t)
            }
        };
        if let Some(b) = &base {
            let p = join(path, "base");
            if !matches!(template, TemplateRef::Folder { .. }) {
                self.c.error(
                    self.spans[&p].clone(),
                    p,
                    "`base` only applies when `template` is a folder of your own",
                );
            } else if !builtins.contains(&b.as_str()) {
                let hint = suggest(b, builtins.iter().copied())
                    .unwrap_or_else(|| format!("built-in templates: {}", builtins.join(", ")));
                self.c.error_with_hint(
                    self.spans[&p].clone(),
                    p,
                    format!("unknown template `{b}`"),
                    hint,
                );
            }
        }

        let mut vars = BTreeMap::new();
        if let Some(v) = t.get("vars") {
            let vp = join(path, "vars");
            if let Some(vt) = self.table(v, &vp) {
                for (k, v) in vt.iter() {
                    let key = k.get_ref().to_string();
                    let kp = format!("{vp}.{key}");
                    self.record(&kp, k.span());
                    let value = match v.get_ref() {
                        DeValue::String(s) => Some(VarValue::String(s.to_string())),
                        DeValue::Boolean(b) => Some(VarValue::Bool(*b)),
                        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                            .ok()
                            .map(VarValue::Integer),
                        other => {
                            self.c.error(
                                v.span(),
                                &kp,
                                format!(
                                    "expected a string, integer or boolean, found {}",
                                    type_name(other)
                                ),
                            );
                            None
                        }
                    };
                    if let Some(value) = value {
                        vars.insert(key, value);
                    }
                }
            }
        }

        let mut publish = Vec::new();
        for (i, (s, span)) in self.strings(t, "publish", path).into_iter().enumerate() {
            match parse_port_pair(&s) {
                Some((host_port, container_port)) => publish.push(Publish {
                    host_port,
                    container_port,
                }),
                None => self.c.error_with_hint(
                    span,
                    format!("{path}.publish[{i}]"),
                    format!("invalid port `{s}`"),
                    "write \"PORT\" or \"HOST_PORT:CONTAINER_PORT\", e.g. \"5432\" or \"8080:80\"",
                ),
            }
        }

        let mut volumes = Vec::new();
        for (i, (s, span)) in self.strings(t, "volumes", path).into_iter().enumerate() {
            match parse_volume(&s) {
                Ok(v) => volumes.push(v),
                Err(why) => self.c.error_with_hint(
                    span,
                    format!("{path}.volumes[{i}]"),
                    format!("invalid volume `{s}`: {why}"),
                    "write \"NAME:/path/in/container\" (add \":ro\" for read-only); host folders are not allowed",
                ),
            }
        }

        let volumes_from = self.names(t, "volumes_from", path);

        let mut env = BTreeMap::new();
        if let Some(v) = t.get("env") {
            let ep = join(path, "env");
            if let Some(et) = self.table(v, &ep) {
                for (k, v) in et.iter() {
                    let key = k.get_ref().to_string();
                    let kp = format!("{ep}.{key}");
                    self.record(&kp, k.span());
                    if !valid_env_name(&key) {
                        self.c.error(
                            k.span(),
                            &kp,
                            format!("invalid environment variable name `{key}`"),
                        );
                    }
                    match v.get_ref() {
                        DeValue::String(s) => {
                            env.insert(key, s.to_string());
                        }
                        DeValue::Integer(i) => {
                            env.insert(key, i.as_str().to_string());
                        }
                        DeValue::Boolean(b) => {
                            env.insert(key, b.to_string());
                        }
                        other => self.c.error(
                            v.span(),
                            &kp,
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
            }
        }

        let mut secrets = Vec::new();
        for (i, (s, span)) in self.strings(t, "secrets", path).into_iter().enumerate() {
            if valid_secret_name(&s) {
                secrets.push(s);
            } else {
                self.c.error_with_hint(
                    span,
                    format!("{path}.secrets[{i}]"),
                    format!("invalid secret name `{s}`"),
                    "a secret is named by an environment variable name such as PG_PASSWORD; its value never goes in hosts.toml",
                );
            }
        }
        for key in env.keys() {
            if secrets.contains(key) {
                let kp = format!("{path}.env.{key}");
                self.c.error(
                    self.spans[&kp].clone(),
                    &kp,
                    format!("`{key}` is both a plain env value and a secret"),
                );
            }
        }

        let uses = self.names(t, "uses", path);
        let after = self.names(t, "after", path);
        let logs_to = self.nonempty_string(t, "logs_to", path);
        let public = self.boolean(t, "public", path).unwrap_or(false);
        let ready_timeout = self.seconds(t, "ready_timeout", path);
        let replace = self.replace(t, path);
        let replicas = self
            .bounded(
                t,
                "replicas",
                path,
                1..=1000,
                |n| format!("{n} replicas is out of range 1-1000"),
                "a number of tasks from 1 to 1000",
            )
            .map(|n| n as u32);
        if replicas.is_some() && self.mode != Mode::Swarm {
            let p = join(path, "replicas");
            self.c.error_with_hint(
                self.spans[&p].clone(),
                p,
                "`replicas` runs a service's tasks over a swarm's nodes, and this project is not a swarm",
                "add mode = \"swarm\" to [project], or remove this key",
            );
        }

        Some(Service {
            name,
            host: host?,
            pinned,
            replicas,
            template,
            vars,
            publish,
            volumes,
            volumes_from,
            env,
            secrets,
            uses,
            after,
            logs_to,
            public,
            ready_timeout,
            replace,
        })
    }

    fn names(&mut self, t: &DeTable, key: &str, path: &str) -> Vec<String> {
        self.strings(t, key, path)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }
}

/// Checks that need the whole file: references, conflicts, cycles.
fn cross_checks(inv: &Inventory, c: &mut Collector) {
    let host_names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    let service_names: Vec<&str> = inv.services.iter().map(|s| s.name.as_str()).collect();
    let data_names: Vec<&str> = inv.data.iter().map(|d| d.name.as_str()).collect();

    let unknown = |c: &mut Collector, path: String, what: &str, name: &str, known: &[&str]| {
        let hint = suggest(name, known.iter().copied()).unwrap_or_else(|| {
            if known.is_empty() {
                format!("no {what}s are defined")
            } else {
                format!("known {what}s: {}", known.join(", "))
            }
        });
        c.error_with_hint(
            inv.span(&path),
            path,
            format!("unknown {what} `{name}`"),
            hint,
        );
    };

    // Two hosts on one address and port are one host under two names.
    let mut seen: HashMap<(String, u16), &str> = HashMap::new();
    for h in &inv.hosts {
        let port = h.port.unwrap_or(22);
        if let Some(other) = seen.insert((h.address.clone(), port), &h.name) {
            let p = format!("hosts.{}.address", h.name);
            c.error(
                inv.span(&p),
                p,
                format!("host `{other}` already uses {}:{port}", h.address),
            );
        }
    }
    // Local forwards share the provisioning computer's 127.0.0.1.
    let mut forwards: HashMap<u16, &str> = HashMap::new();
    for h in &inv.hosts {
        for (i, f) in h.machine.iter().flat_map(|m| m.forward.iter()).enumerate() {
            if let Some(other) = forwards.insert(f.host_port, &h.name) {
                let p = format!("hosts.{}.forward[{i}]", h.name);
                c.error(
                    inv.span(&p),
                    p,
                    format!(
                        "local port {} is already forwarded to host `{other}`",
                        f.host_port
                    ),
                );
            }
        }
    }

    for d in &inv.data {
        if !host_names.contains(&d.host.as_str()) {
            unknown(
                c,
                format!("data.{}.host", d.name),
                "host",
                &d.host,
                &host_names,
            );
        }
    }

    let mut published: HashMap<(&str, u16), &str> = HashMap::new();
    let mut volume_owner: HashMap<(&str, &str), &str> = HashMap::new();
    for s in &inv.services {
        let base = format!("services.{}", s.name);
        if !host_names.contains(&s.host.as_str()) {
            unknown(c, format!("{base}.host"), "host", &s.host, &host_names);
        }
        for (i, p) in s.publish.iter().enumerate() {
            if let Some(other) = published.insert((s.host.as_str(), p.host_port), &s.name) {
                let path = format!("{base}.publish[{i}]");
                c.error_with_hint(
                    inv.span(&path),
                    path,
                    format!(
                        "port {} on host `{}` is already published by service `{other}`",
                        p.host_port, s.host
                    ),
                    "publish it on another host port: \"HOST_PORT:CONTAINER_PORT\"",
                );
            }
        }
        let mut paths_seen = HashSet::new();
        for (i, v) in s.volumes.iter().enumerate() {
            let path = format!("{base}.volumes[{i}]");
            if !paths_seen.insert(v.path.as_str()) {
                c.error(
                    inv.span(&path),
                    path.clone(),
                    format!("`{}` is mounted twice", v.path),
                );
            }
            if data_names.contains(&v.volume.as_str()) {
                c.error_with_hint(
                    inv.span(&path),
                    path.clone(),
                    format!("`{}` is a data container, not a volume", v.volume),
                    format!("use volumes_from = [\"{}\"]", v.volume),
                );
            }
            // A volume holding one service's data is never shared by accident
            // with a second writer; read-only mounts may share.
            if !v.read_only {
                if let Some(other) =
                    volume_owner.insert((s.host.as_str(), v.volume.as_str()), &s.name)
                {
                    c.error_with_hint(
                        inv.span(&path),
                        path,
                        format!(
                            "volume `{}` on host `{}` is already written by service `{other}`",
                            v.volume, s.host
                        ),
                        "mount it read-only here (\":ro\") or use another volume",
                    );
                }
            }
        }
        for (i, d) in s.volumes_from.iter().enumerate() {
            let path = format!("{base}.volumes_from[{i}]");
            match inv.data.iter().find(|x| &x.name == d) {
                None => unknown(c, path, "data container", d, &data_names),
                Some(dc) if dc.host != s.host => c.error(
                    inv.span(&path),
                    path,
                    format!(
                        "data container `{d}` is on host `{}`, service `{}` on host `{}`",
                        dc.host, s.name, s.host
                    ),
                ),
                Some(_) => {}
            }
        }
        for (field, list) in [("uses", &s.uses), ("after", &s.after)] {
            for (i, u) in list.iter().enumerate() {
                let path = format!("{base}.{field}[{i}]");
                if u == &s.name {
                    c.error(
                        inv.span(&path),
                        path,
                        format!("service `{u}` cannot depend on itself"),
                    );
                    continue;
                }
                let Some(target) = inv.service(u) else {
                    unknown(c, path, "service", u, &service_names);
                    continue;
                };
                if field == "uses"
                    && !inv.swarm()
                    && target.host != s.host
                    && target.publish.is_empty()
                {
                    c.error_with_hint(
                        inv.span(&path),
                        path,
                        format!(
                            "service `{u}` runs on host `{}` and publishes no port, so `{}` on host `{}` cannot reach it",
                            target.host, s.name, s.host
                        ),
                        format!("add publish = [\"PORT\"] to [services.{u}]"),
                    );
                }
            }
        }
        if let Some(l) = &s.logs_to {
            let path = format!("{base}.logs_to");
            match inv.service(l) {
                None => unknown(c, path, "service", l, &service_names),
                Some(t) if t.host != s.host && t.publish.is_empty() => c.error_with_hint(
                    inv.span(&path),
                    path,
                    format!(
                        "service `{l}` runs on host `{}` and publishes no port for logs",
                        t.host
                    ),
                    format!("add publish = [\"24224\"] to [services.{l}]"),
                ),
                Some(_) => {}
            }
        }
    }

    for cycle in find_cycles(inv) {
        let first = &cycle[0];
        let s = inv.service(first).expect("cycle members exist");
        let field = if s.uses.contains(&cycle[1]) {
            "uses"
        } else if s.after.contains(&cycle[1]) {
            "after"
        } else {
            "logs_to"
        };
        let path = match s
            .uses
            .iter()
            .chain(s.after.iter())
            .position(|x| x == &cycle[1])
        {
            Some(_) if field != "logs_to" => {
                let list = if field == "uses" { &s.uses } else { &s.after };
                format!(
                    "services.{first}.{field}[{}]",
                    list.iter().position(|x| x == &cycle[1]).unwrap_or(0)
                )
            }
            _ => format!("services.{first}.{field}"),
        };
        c.error_with_hint(
            inv.span(&path),
            path,
            format!("dependency cycle: {}", cycle.join(" -> ")),
            "services must start in some order: remove one of these dependencies",
        );
    }
}

/// Every dependency cycle, each reported once from its smallest name.
fn find_cycles(inv: &Inventory) -> Vec<Vec<String>> {
    let mut cycles = Vec::new();
    let mut reported: HashSet<Vec<String>> = HashSet::new();
    for start in &inv.services {
        // Depth-first search for a path back to `start`.
        let mut stack: Vec<(String, Vec<String>)> =
            vec![(start.name.clone(), vec![start.name.clone()])];
        let mut visited = HashSet::new();
        while let Some((node, path)) = stack.pop() {
            let Some(s) = inv.service(&node) else {
                continue;
            };
            for dep in s.dependencies() {
                if dep == &start.name {
                    let mut cycle = path.clone();
                    let mut key = cycle.clone();
                    key.sort();
                    if reported.insert(key) && cycle.iter().min() == Some(&start.name) {
                        cycle.push(start.name.clone());
                        cycles.push(cycle);
                    }
                } else if inv.service(dep).is_some() && visited.insert(dep.clone()) {
                    let mut p = path.clone();
                    p.push(dep.clone());
                    stack.push((dep.clone(), p));
                }
            }
        }
    }
    cycles
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn valid_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// "80" -> (80, 80); "8080:80" -> (8080, 80).
fn parse_port_pair(s: &str) -> Option<(u16, u16)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    match s.split_once(':') {
        None => port(s).map(|p| (p, p)),
        Some((a, b)) => Some((port(a)?, port(b)?)),
    }
}

fn parse_volume(s: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, path, read_only) = match parts.as_slice() {
        [n, p] => (*n, *p, false),
        [n, p, "ro"] => (*n, *p, true),
        [n, p, "rw"] => (*n, *p, false),
        [_, _, m] => return Err(format!("unknown mode `{m}` (ro or rw)")),
        _ => return Err("expected NAME:/path".into()),
    };
    if name.starts_with('/') || name.starts_with('.') || name.starts_with('~') {
        return Err("host folders are not portable; use a named volume".into());
    }
    if !valid_name(name) {
        return Err(format!("invalid volume name `{name}`"));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "`{path}` must be an absolute path in the container"
        ));
    }
    if path.contains('\0') {
        return Err("a container path cannot hold a NUL character".into());
    }
    Ok(VolumeMount {
        volume: name.into(),
        path: path.into(),
        read_only,
        implied: false,
    })
}

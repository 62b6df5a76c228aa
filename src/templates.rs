//! Service templates: a folder per service with a `template.toml` manifest
//! and files rendered with minijinja (strict undefined) into a build context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};
use indexmap::IndexMap;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::inventory::{resolve_path, TemplateRef, VarValue};

/// The built-in templates, embedded so the binary works from anywhere.
static BUILTIN: Dir = include_dir!("$CARGO_MANIFEST_DIR/templates");

pub const MANIFEST: &str = "template.toml";

/// What a template says about itself.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub description: String,
    /// The port the service listens on inside its container.
    pub port: Option<u16>,
    /// Built from an upstream registry image (not from Debian packages).
    #[serde(default)]
    pub upstream: bool,
    /// Readiness probe, run with `docker exec` in the container.
    #[serde(default)]
    pub ready: Vec<String>,
    /// The app source is copied into the build context under `app/`.
    #[serde(default)]
    pub app: bool,
    /// Paths in the container where the service keeps its data (its
    /// image's VOLUMEs): each gets a named volume unless hosts.toml mounts
    /// one there.
    #[serde(default)]
    pub data: Vec<String>,
    #[serde(default)]
    pub vars: IndexMap<String, VarSpec>,
    /// Environment given to services that use this one, rendered with the
    /// resolved `address` and `port`, this template's vars and `secret.NAME`.
    #[serde(default)]
    pub exports: BTreeMap<String, String>,
    /// Secrets this template takes as read-only files at
    /// `/run/secrets/NAME` instead of environment variables, so that
    /// `docker inspect` never shows them. The others stay environment.
    #[serde(default)]
    pub secret_files: Vec<String>,
    /// Rendered files kept out of the image: uploaded to the host and
    /// mounted read-only into the container, so a change (e.g. pg_hba's
    /// client hosts) is applied with a reload, never with a new container.
    #[serde(default)]
    pub live: Option<Live>,
    /// What a service placed from this template must be given (`[needs]`):
    /// without it the container would only fail once it starts.
    #[serde(default)]
    pub needs: Needs,
    /// How a new container of the service replaces the running one.
    #[serde(default)]
    pub replace: Replace,
    /// The signal that makes the service look up the services it uses
    /// afresh (Nginx: `HUP`, a reload): sent when one of them switches to a
    /// new release beside it. Without one, it finds the new release on its
    /// own next lookup.
    #[serde(default)]
    pub reresolve_signal: Option<String>,
}

/// See [`Manifest::replace`].
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Replace {
    /// The old container stops, then the new one starts (a service that
    /// keeps data: two must never write it at once).
    #[default]
    StopFirst,
    /// The new container starts beside the old one and takes over once it
    /// is ready; then the old one stops (no request fails meanwhile). Only
    /// for a service with no volumes and no published port; others fall
    /// back to stop-first, and the plan says why.
    StartFirst,
}

/// See [`Manifest::needs`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// Secrets the service must list in its `secrets` (as environment or,
    /// when in `secret_files`, as files).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// Where a secret file is mounted in the container.
pub fn secret_file_path(name: &str) -> String {
    format!("/run/secrets/{name}")
}

/// See [`Manifest::live`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Live {
    /// Paths of rendered files (relative to the template folder).
    pub files: Vec<String>,
    /// Folder inside the container where they appear, read-only.
    pub mount: String,
    /// Signal sent to the container's main process when they changed
    /// (`docker kill --signal`), e.g. `HUP`.
    pub reload_signal: String,
}

/// What `{{ network_gateway }}` renders to in a template: the host fills in
/// the gateway address(es) of the project's network when it installs a live
/// file (one copy of the line per address, as `ADDR/32` or `ADDR/128`).
pub const NETWORK_GATEWAY_TOKEN: &str = "@PROVISION_NETWORK_GATEWAY@";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VarSpec {
    pub default: Option<toml::Value>,
    #[serde(default)]
    pub doc: String,
    /// What values are valid; checked before anything is rendered, so a
    /// value that would break out of a config line or a shell word is an
    /// input error and never reaches a host.
    #[serde(default)]
    pub kind: VarKind,
    /// Bounds of an `integer`.
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// The kinds of template variables. Every built-in template gives each of
/// its variables a kind narrower than `text`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VarKind {
    /// Any text without NUL (a user's own templates quote it themselves).
    #[default]
    Text,
    /// One line of text: no control characters.
    Line,
    /// One config token: ASCII letters, digits, `.`, `_` and `-`.
    Word,
    /// A Docker image reference (`registry:5000/org/name:tag@sha256:...`).
    Image,
    /// A whole number (a TOML integer or a string of digits), within
    /// `min`/`max` when given.
    Integer,
    /// A size such as `128mb`, `10m`, `2g` or `0`: digits, then letters.
    Size,
    /// A PostgreSQL name (database, schema): 1 to 63 bytes, anything but
    /// NUL. The templates quote it, so `'`, `$(...)` or a newline are fine.
    PgName,
    /// A PostgreSQL role name: a `pg_name` that does not start with `pg_`
    /// (reserved for the server's own roles).
    PgRole,
    /// Host names separated by spaces (Nginx's `server_name`): letters,
    /// digits, `.`, `-`, `_` and a `*` wildcard.
    Hostnames,
    /// A RubyGems version requirement such as `~> 8.0` or `>= 1.2, < 2`.
    GemRequirement,
}

/// PostgreSQL truncates longer names (NAMEDATALEN - 1), so a longer one
/// would not be the name the URL carries.
const PG_NAME_MAX: usize = 63;

impl VarSpec {
    /// Whether `value` is valid for this variable; the message says why not
    /// (never repeating the value, which may be long or hold control
    /// characters).
    pub fn check(&self, value: &VarValue) -> Result<(), String> {
        let text = value.to_string();
        let chars_ok = |ok: &dyn Fn(char) -> bool| !text.is_empty() && text.chars().all(ok);
        match self.kind {
            VarKind::Text => {
                if text.contains('\0') {
                    return Err("must not hold a NUL character".into());
                }
            }
            VarKind::Line => {
                if text.chars().any(char::is_control) {
                    return Err("must be one line without control characters".into());
                }
            }
            VarKind::Word => {
                if !chars_ok(&|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    return Err("must be one word of ASCII letters, digits, `.`, `_` or `-`".into());
                }
            }
            VarKind::Image => {
                let first_ok = text
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric());
                if !first_ok || !chars_ok(&|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c)) {
                    return Err("must be a Docker image reference such as `debian:bookworm` (letters, digits, `.`, `_`, `-`, `/`, `:`, `@`)".into());
                }
            }
            VarKind::Integer => {
                let n = match value {
                    VarValue::Integer(i) => Some(*i),
                    VarValue::String(s) if chars_ok(&|c| c.is_ascii_digit()) => s.parse().ok(),
                    _ => None,
                };
                let Some(n) = n else {
                    return Err("must be a whole number".into());
                };
                if self.min.is_some_and(|m| n < m) || self.max.is_some_and(|m| n > m) {
                    return Err(format!(
                        "must be between {} and {}",
                        self.min
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "-inf".into()),
                        self.max
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "inf".into())
                    ));
                }
            }
            VarKind::Size => {
                let digits = text.chars().take_while(char::is_ascii_digit).count();
                let unit_ok = text[digits..].chars().all(|c| c.is_ascii_alphabetic());
                if digits == 0 || !unit_ok || text.len() - digits > 3 {
                    return Err("must be a size such as `128mb`, `10m` or `0`".into());
                }
            }
            VarKind::PgName | VarKind::PgRole => {
                if text.is_empty() || text.len() > PG_NAME_MAX || text.contains('\0') {
                    return Err(format!(
                        "must be a PostgreSQL name of 1 to {PG_NAME_MAX} bytes without NUL (this one has {} bytes)",
                        text.len()
                    ));
                }
                if self.kind == VarKind::PgRole && text.starts_with("pg_") {
                    return Err(
                        "must not start with `pg_` (reserved for PostgreSQL's own roles)".into(),
                    );
                }
            }
            VarKind::Hostnames => {
                let name_ok = |w: &str| {
                    !w.is_empty()
                        && w.chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-_*".contains(c))
                };
                if !text.split(' ').all(name_ok) {
                    return Err(
                        "must be host names separated by single spaces (letters, digits, `.`, `-`, `_`, `*`)".into(),
                    );
                }
            }
            VarKind::GemRequirement => {
                if !chars_ok(&|c| c.is_ascii_alphanumeric() || " .,~<>=!".contains(c))
                    || !text.chars().any(|c| c.is_ascii_digit())
                {
                    return Err("must be a gem version requirement such as `~> 8.0`".into());
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateFile {
    /// Path inside the build context, `/`-separated.
    pub path: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Template {
    /// How messages name it: `postgis` or `./my/app`.
    pub name: String,
    pub manifest: Manifest,
    pub files: Vec<TemplateFile>,
}

/// A file of a rendered build context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextFile {
    pub path: String,
    pub mode: u32,
    #[serde(skip)]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// The template folder or its manifest cannot be read.
    Load { template: String, message: String },
    /// A file failed to render (e.g. an undefined variable).
    Render {
        template: String,
        file: String,
        line: Option<usize>,
        message: String,
    },
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Load { template, message } => {
                write!(f, "template `{template}`: {message}")
            }
            TemplateError::Render {
                template,
                file,
                line,
                message,
            } => {
                write!(f, "template `{template}`, file {file}")?;
                if let Some(l) = line {
                    write!(f, " line {l}")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

/// Names of the built-in templates found in the embedded folder.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN
        .dirs()
        .filter(|d| d.get_file(d.path().join(MANIFEST)).is_some())
        .filter_map(|d| d.path().to_str())
        .collect()
}

fn builtin(name: &str) -> Result<Template, TemplateError> {
    let load_err = |message: String| TemplateError::Load {
        template: name.to_string(),
        message,
    };
    let dir = BUILTIN
        .get_dir(name)
        .ok_or_else(|| load_err("no such built-in template".into()))?;
    let mut files = Vec::new();
    collect_embedded(dir, dir.path(), &mut files);
    finish(name.to_string(), files)
}

fn collect_embedded(dir: &Dir, base: &Path, out: &mut Vec<TemplateFile>) {
    for f in dir.files() {
        let rel = f.path().strip_prefix(base).unwrap_or(f.path());
        out.push(TemplateFile {
            path: rel.to_string_lossy().replace('\\', "/"),
            text: String::from_utf8_lossy(f.contents()).into_owned(),
        });
    }
    for d in dir.dirs() {
        collect_embedded(d, base, out);
    }
}

fn read_folder(path: &Path, name: &str) -> Result<Vec<TemplateFile>, TemplateError> {
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| TemplateError::Load {
            template: name.to_string(),
            message: format!("cannot read folder {}: {e}", dir.display()),
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(|e| TemplateError::Load {
                template: name.to_string(),
                message: format!("cannot read {}: {e}", p.display()),
            })?;
            let rel = p.strip_prefix(path).unwrap_or(&p);
            files.push(TemplateFile {
                path: rel.to_string_lossy().replace('\\', "/"),
                text,
            });
        }
    }
    Ok(files)
}

fn finish(name: String, mut files: Vec<TemplateFile>) -> Result<Template, TemplateError> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest_text = files
        .iter()
        .find(|f| f.path == MANIFEST)
        .map(|f| f.text.clone())
        .ok_or_else(|| TemplateError::Load {
            template: name.clone(),
            message: format!("missing {MANIFEST}"),
        })?;
    let manifest: Manifest = toml::from_str(&manifest_text).map_err(|e| TemplateError::Load {
        template: name.clone(),
        message: format!("{MANIFEST}: {}", e.message()),
    })?;
    files.retain(|f| f.path != MANIFEST && !f.path.starts_with("README"));
    if !files.iter().any(|f| f.path == "Dockerfile") {
        return Err(TemplateError::Load {
            template: name,
            message: "missing Dockerfile".into(),
        });
    }
    Ok(Template {
        name,
        manifest,
        files,
    })
}

/// Load a service's template: a built-in one, or a folder of the user's
/// whose files override those of its `base` built-in template.
pub fn load(tref: &TemplateRef, root: &Path) -> Result<Template, TemplateError> {
    match tref {
        TemplateRef::Builtin(name) => builtin(name),
        TemplateRef::Folder { path, base } => {
            let shown = path.display().to_string();
            let folder: PathBuf = resolve_path(root, &shown);
            let own = read_folder(&folder, &shown)?;
            let mut files = match base {
                Some(b) => {
                    let mut base_files = builtin(b)?.files;
                    let manifest = BUILTIN
                        .get_file(format!("{b}/{MANIFEST}"))
                        .map(|f| String::from_utf8_lossy(f.contents()).into_owned())
                        .unwrap_or_default();
                    base_files.push(TemplateFile {
                        path: MANIFEST.into(),
                        text: manifest,
                    });
                    base_files
                }
                None => Vec::new(),
            };
            for f in own {
                files.retain(|x| x.path != f.path);
                files.push(f);
            }
            finish(shown, files)
        }
    }
}

pub fn var_value(v: &VarValue) -> Value {
    match v {
        VarValue::String(s) => Value::from(s.clone()),
        VarValue::Integer(i) => Value::from(*i),
        VarValue::Bool(b) => Value::from(*b),
    }
}

/// A service as another service sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsedService {
    /// A name on the same host's network ([`crate::plan::resolve_use`]),
    /// the host's address otherwise.
    pub address: String,
    pub port: u16,
    /// `address` as it goes in a URL: IPv6 addresses in brackets.
    pub url_host: String,
}

impl UsedService {
    pub fn new(address: String, port: u16) -> Self {
        let url_host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.clone()
        };
        UsedService {
            address,
            port,
            url_host,
        }
    }
}

/// Everything a template may refer to, besides its own vars.
#[derive(Debug, Clone, Serialize)]
pub struct RenderInput {
    pub service: BTreeMap<String, String>,
    pub host: BTreeMap<String, String>,
    pub uses: BTreeMap<String, UsedService>,
    pub clients: Vec<String>,
    /// Services on the same host that use this one.
    pub local_users: Vec<String>,
}

impl Template {
    /// Merge defaults and the user's vars; report unknown and missing ones.
    pub fn vars(
        &self,
        user: &BTreeMap<String, VarValue>,
    ) -> Result<BTreeMap<String, Value>, VarProblems> {
        let mut problems = VarProblems::default();
        let mut out = BTreeMap::new();
        for (name, spec) in &self.manifest.vars {
            match (user.get(name), &spec.default) {
                (Some(v), _) => {
                    if let Err(why) = spec.check(v) {
                        problems.invalid.push((name.clone(), why));
                    }
                    out.insert(name.clone(), var_value(v));
                }
                (None, Some(d)) => {
                    if let Some(why) = default_value(d).and_then(|v| spec.check(&v).err()) {
                        problems.bad_defaults.push((name.clone(), why));
                    }
                    out.insert(name.clone(), Value::from_serialize(d));
                }
                (None, None) => problems.missing.push(name.clone()),
            }
        }
        for name in user.keys() {
            if !self.manifest.vars.contains_key(name) {
                problems.unknown.push(name.clone());
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Render every file into a build context.
    pub fn render(
        &self,
        vars: &BTreeMap<String, Value>,
        input: &RenderInput,
    ) -> Result<Vec<ContextFile>, TemplateError> {
        let ctx = context(vars, input);
        let env = environment();
        let mut out = Vec::new();
        for f in &self.files {
            let text = env.render_str(&f.text, &ctx).map_err(|e| {
                let missing = missing_variables(&env, &f.text, &ctx);
                self.render_error(&f.path, e, &missing)
            })?;
            let mode = if f.path.ends_with(".sh") {
                0o755
            } else {
                0o644
            };
            out.push(ContextFile {
                path: f.path.clone(),
                mode,
                data: text.into_bytes(),
            });
        }
        Ok(out)
    }

    /// Render one export (e.g. DATABASE_URL) for a consumer.
    pub fn export(
        &self,
        key: &str,
        vars: &BTreeMap<String, Value>,
        used: &UsedService,
        secrets: &BTreeMap<String, String>,
    ) -> Result<String, TemplateError> {
        let mut ctx: BTreeMap<String, Value> = vars.clone();
        ctx.insert("address".into(), Value::from(used.address.clone()));
        ctx.insert("port".into(), Value::from(used.port));
        ctx.insert("url_host".into(), Value::from(used.url_host.clone()));
        ctx.insert("secret".into(), Value::from_serialize(secrets));
        let text = &self.manifest.exports[key];
        environment()
            .render_str(text, Value::from_serialize(&ctx))
            .map_err(|e| self.render_error(&format!("{MANIFEST} exports.{key}"), e, &[]))
    }

    fn render_error(&self, file: &str, e: minijinja::Error, missing: &[String]) -> TemplateError {
        let mut message = e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.kind().to_string());
        if e.kind() == minijinja::ErrorKind::UndefinedError {
            message = if missing.is_empty() {
                format!("undefined variable ({message})")
            } else {
                format!("undefined variable `{}`", missing.join("`, `"))
            };
        }
        TemplateError::Render {
            template: self.name.clone(),
            file: file.to_string(),
            line: e.line(),
            message,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VarProblems {
    pub unknown: Vec<String>,
    pub missing: Vec<String>,
    /// The user's values that their variable's kind refuses, with why.
    pub invalid: Vec<(String, String)>,
    /// The template's own defaults that their kind refuses (a template bug).
    pub bad_defaults: Vec<(String, String)>,
}

impl VarProblems {
    pub fn is_empty(&self) -> bool {
        self.unknown.is_empty()
            && self.missing.is_empty()
            && self.invalid.is_empty()
            && self.bad_defaults.is_empty()
    }
}

/// A manifest default as a user value would be, for its check.
fn default_value(d: &toml::Value) -> Option<VarValue> {
    match d {
        toml::Value::String(s) => Some(VarValue::String(s.clone())),
        toml::Value::Integer(i) => Some(VarValue::Integer(*i)),
        toml::Value::Boolean(b) => Some(VarValue::Bool(*b)),
        _ => None,
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Configs and Dockerfiles, not HTML: never escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    // `{{ db_name | shell }}`: one POSIX shell word, quoted like every
    // command provision runs (shlex), for values that land in scripts.
    env.add_filter("shell", shell_filter);
    env
}

fn shell_filter(value: Value) -> String {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    crate::commands::quote(&text).into_owned()
}

/// Dotted names the text uses that the context does not define, so an error
/// can name the variable and not only its line.
fn missing_variables(env: &Environment, text: &str, ctx: &Value) -> Vec<String> {
    let Ok(t) = env.template_from_str(text) else {
        return Vec::new();
    };
    let mut out: Vec<String> = t
        .undeclared_variables(true)
        .into_iter()
        .filter(|name| {
            let mut v = ctx.clone();
            for part in name.split('.') {
                match v.get_attr(part) {
                    Ok(next) if !next.is_undefined() => v = next,
                    _ => return true,
                }
            }
            false
        })
        .collect();
    out.sort();
    out
}

fn context(vars: &BTreeMap<String, Value>, input: &RenderInput) -> Value {
    let mut ctx: BTreeMap<String, Value> = vars.clone();
    ctx.insert("service".into(), Value::from_serialize(&input.service));
    ctx.insert("host".into(), Value::from_serialize(&input.host));
    ctx.insert("uses".into(), Value::from_serialize(&input.uses));
    ctx.insert("clients".into(), Value::from_serialize(&input.clients));
    ctx.insert(
        "local_users".into(),
        Value::from_serialize(&input.local_users),
    );
    ctx.insert("network_gateway".into(), Value::from(NETWORK_GATEWAY_TOKEN));
    Value::from_serialize(&ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(files: &[(&str, &str)]) -> Template {
        let files = files
            .iter()
            .map(|(p, t)| TemplateFile {
                path: p.to_string(),
                text: t.to_string(),
            })
            .collect();
        finish("test".into(), files).unwrap()
    }

    fn input() -> RenderInput {
        RenderInput {
            service: [("name".to_string(), "web".to_string())].into(),
            host: [
                ("name".to_string(), "h1".to_string()),
                ("address".to_string(), "10.0.0.1".to_string()),
            ]
            .into(),
            uses: BTreeMap::new(),
            clients: vec![],
            local_users: vec![],
        }
    }

    #[test]
    fn undefined_variable_names_file_and_line() {
        let t = tpl(&[
            (MANIFEST, "port = 80\n"),
            ("Dockerfile", "FROM x\nRUN {{ nope }}\n"),
        ]);
        let err = t.render(&BTreeMap::new(), &input()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("file Dockerfile line 2"), "{msg}");
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn vars_report_unknown_and_missing() {
        let t = tpl(&[
            (MANIFEST, "[vars.a]\ndefault = 1\n[vars.b]\n"),
            ("Dockerfile", "FROM {{ a }}{{ b }}"),
        ]);
        let user = [("c".to_string(), VarValue::Bool(true))].into();
        let p = t.vars(&user).unwrap_err();
        assert_eq!(p.missing, vec!["b"]);
        assert_eq!(p.unknown, vec!["c"]);
    }

    fn spec(kind: VarKind) -> VarSpec {
        VarSpec {
            default: None,
            doc: String::new(),
            kind,
            min: Some(0),
            max: Some(100),
        }
    }

    fn ok(kind: VarKind, v: &str) -> bool {
        spec(kind).check(&VarValue::String(v.into())).is_ok()
    }

    #[test]
    fn kinds_accept_their_values_and_refuse_the_rest() {
        use VarKind::*;
        let hostile = ["a;b", "a\nb", "$(x)", "`x`", "'", "\"", "a\tb", ""];
        for v in hostile {
            for k in [Word, Image, Integer, Size, Hostnames, GemRequirement] {
                assert!(!ok(k, v), "{k:?} took {v:?}");
            }
        }
        for k in [Word, Image, Integer, Size] {
            assert!(!ok(k, "a b"), "{k:?} took a blank");
        }
        assert!(ok(Text, "a\nb'$(x)") && !ok(Text, "a\0b"));
        assert!(ok(Line, "a b 'c'") && !ok(Line, "a\nb") && !ok(Line, "a\rb"));
        assert!(ok(Word, "production") && ok(Word, "my_env-2.x"));
        assert!(ok(Image, "debian:bookworm"));
        assert!(ok(Image, "registry.example:5000/org/pg:15@sha256:ab12"));
        assert!(!ok(Image, "-debian") && !ok(Image, "debian\nRUN x"));
        assert!(ok(Integer, "7") && !ok(Integer, "101") && !ok(Integer, "-1"));
        assert!(spec(Integer).check(&VarValue::Integer(100)).is_ok());
        assert!(spec(Integer).check(&VarValue::Integer(-3)).is_err());
        assert!(spec(Integer).check(&VarValue::Bool(true)).is_err());
        assert!(ok(Size, "128mb") && ok(Size, "0") && ok(Size, "10m"));
        assert!(!ok(Size, "mb") && !ok(Size, "10m;") && !ok(Size, "1 g"));
        assert!(ok(Hostnames, "_") && ok(Hostnames, "example.com *.example.org"));
        assert!(!ok(Hostnames, "a  b") && !ok(Hostnames, "a;"));
        assert!(ok(GemRequirement, "~> 8.0") && ok(GemRequirement, ">= 1.2, < 2"));
        // PostgreSQL names: anything but NUL, up to 63 bytes.
        for v in [
            "app",
            "'; rm -rf /;'",
            "$(id)",
            "a\nb",
            "名前",
            &"x".repeat(63),
        ] {
            assert!(ok(PgName, v) && ok(PgRole, v), "{v:?}");
        }
        assert!(!ok(PgName, "") && !ok(PgName, &"x".repeat(64)) && !ok(PgName, "a\0"));
        assert!(!ok(PgName, &"é".repeat(32)), "64 bytes in 32 characters");
        assert!(ok(PgName, "pg_x") && !ok(PgRole, "pg_x"));
    }

    #[test]
    fn invalid_user_values_and_defaults_are_reported() {
        let t = tpl(&[
            (
                MANIFEST,
                "[vars.a]\nkind = \"word\"\n[vars.b]\ndefault = \"x y\"\nkind = \"word\"\n",
            ),
            ("Dockerfile", "FROM {{ a }}{{ b }}"),
        ]);
        let user = [("a".to_string(), VarValue::String("a;b".into()))].into();
        let p = t.vars(&user).unwrap_err();
        assert_eq!(p.invalid.len(), 1);
        assert_eq!(p.invalid[0].0, "a");
        assert_eq!(p.bad_defaults.len(), 1);
        assert_eq!(p.bad_defaults[0].0, "b");
    }

    #[test]
    fn the_shell_filter_makes_one_word() {
        let t = tpl(&[
            (MANIFEST, "[vars.a]\n[vars.n]\ndefault = 3\n"),
            ("Dockerfile", "FROM x\n"),
            ("run.sh", "A={{ a | shell }} N={{ n | shell }}"),
        ]);
        let vars = t
            .vars(&[("a".to_string(), VarValue::String("it's $(x)".into()))].into())
            .unwrap();
        let files = t.render(&vars, &input()).unwrap();
        let sh = files.iter().find(|f| f.path == "run.sh").unwrap();
        assert_eq!(String::from_utf8_lossy(&sh.data), r#"A="it's "'$(x)' N=3"#);
    }

    /// Every variable of a built-in template has a kind narrower than
    /// `text`, its default passes it, and a shell script only takes values
    /// through `| shell` (the names of services and hosts are checked by
    /// the inventory and may appear bare, in comments).
    #[test]
    fn rails_needs_its_secret_key_base() {
        let t = builtin("rails").unwrap();
        assert_eq!(t.manifest.needs.secrets, ["SECRET_KEY_BASE"]);
        assert_eq!(builtin("redis").unwrap().manifest.needs, Needs::default());
    }

    #[test]
    fn builtin_templates_check_and_quote_their_variables() {
        for name in builtin_names() {
            let t = builtin(name).unwrap();
            for (var, spec) in &t.manifest.vars {
                assert_ne!(spec.kind, VarKind::Text, "{name}: `{var}` has no kind");
            }
            t.vars(&BTreeMap::new())
                .unwrap_or_else(|p| panic!("{name}: {p:?}"));
            for f in t.files.iter().filter(|f| f.path.ends_with(".sh")) {
                for expr in f.text.split("{{").skip(1) {
                    let expr = expr.split("}}").next().unwrap().trim();
                    assert!(
                        expr.ends_with("| shell") || ["service.name", "host.name"].contains(&expr),
                        "{name}/{}: `{{{{ {expr} }}}}` is not quoted with | shell",
                        f.path
                    );
                }
            }
        }
    }

    #[test]
    fn user_value_overrides_default() {
        let t = tpl(&[
            (MANIFEST, "[vars.a]\ndefault = \"x\"\n"),
            ("Dockerfile", "FROM {{ a }}\n"),
        ]);
        let vars = t
            .vars(&[("a".to_string(), VarValue::String("y".into()))].into())
            .unwrap();
        let files = t.render(&vars, &input()).unwrap();
        assert_eq!(files[0].data, b"FROM y\n");
    }
}

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
    /// Rendered files kept out of the image: uploaded to the host and
    /// mounted read-only into the container, so a change (e.g. pg_hba's
    /// client hosts) is applied with a reload, never with a new container.
    #[serde(default)]
    pub live: Option<Live>,
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
    /// Container name on the same host, the host's address otherwise.
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
                    out.insert(name.clone(), var_value(v));
                }
                (None, Some(d)) => {
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
        if problems.missing.is_empty() && problems.unknown.is_empty() {
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
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Configs and Dockerfiles, not HTML: never escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
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

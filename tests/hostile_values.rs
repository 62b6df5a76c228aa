//! Property tests: every value that reaches a host (command-line words,
//! container paths, env values, template variables) arrives byte for byte,
//! never interpreted by a shell; values a Docker env file cannot carry are
//! refused by the planner; no hosts.toml text makes the inventory panic.
//!
//! The shell is real: lines built by `commands::shell` run through
//! `LocalTransport` (`sh -c`, dash on Debian) and again nested in
//! `bash -c` (root's login shell, which sshd uses on a host). Values are
//! batched: one `sh -c` prints a thousand of them NUL-separated.
//!
//! `HOSTILE_VALUES` sets how many values the argv property checks (default
//! 100 000, about 10 s); the long run is
//! `HOSTILE_VALUES=1000000 cargo test --release --test hostile_values`.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use provision::commands;
use provision::executor::tar_of;
use provision::load;
use provision::plan::{self, Action, Plan, StepKind};
use provision::secrets::Generate;
use provision::transport::{Exec, LocalTransport, Transport};

/// Values per `sh -c` line at most, and the line's size limit (Linux caps
/// one argument, the whole `sh -c` line, at 128 KiB).
const BATCH: usize = 1000;
const LINE_LIMIT: usize = 60_000;

fn total_values() -> usize {
    std::env::var("HOSTILE_VALUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Pieces a shell would love to interpret, and text that is merely odd.
const ATOMS: &[&str] = &[
    "'",
    "\"",
    "\\",
    "$(id)",
    "`id`",
    "$HOME",
    "${x:-y}",
    "$'\\n'",
    "$((1+1))",
    "\n",
    "\t",
    " ",
    "  ",
    "*",
    "?",
    "[a]",
    "{a,b}",
    "~",
    "~root",
    "#",
    ";",
    "&",
    "&&",
    "|",
    "||",
    "<",
    ">",
    ">>",
    "2>&1",
    "!",
    "!!",
    "%s",
    "%",
    "%n",
    "-n",
    "-e",
    "--",
    "\\0",
    "\\n",
    "\\x41",
    "\r",
    "\r\n",
    "\u{7}",
    "\u{1b}[31m",
    "\u{7f}",
    "=",
    "'\\''",
    "\"'\"",
    "é",
    "日本語",
    "🦀",
    "\u{202e}",
    "\u{feff}",
    "\u{200b}",
    "a",
    "Z",
    "0",
    "/",
    ".",
    "..",
    "../",
    ":",
    ",",
    "^",
    "(",
    ")",
];

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(ATOMS).prop_map(str::to_string),
        1 => any::<char>().prop_map(|c| c.to_string()),
    ]
}

/// A value with no NUL (NUL cannot be in a command-line word).
fn hostile() -> impl Strategy<Value = String> {
    let short = vec(atom(), 0..12).prop_map(|v| v.concat());
    let arbitrary = any::<String>();
    let long = vec(atom(), 500..2000).prop_map(|v| v.concat());
    prop_oneof![6 => short, 3 => arbitrary, 1 => long].prop_map(|s| s.replace('\0', ""))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `line` with the real `sh -c` and returns its stdout.
fn sh(rt: &tokio::runtime::Runtime, line: String, stdin: Option<Vec<u8>>) -> Vec<u8> {
    let mut req = Exec::new(line.clone());
    if let Some(b) = stdin {
        req = req.stdin_bytes(b);
    }
    let out = rt.block_on(LocalTransport::default().exec(req)).unwrap();
    assert!(
        out.success(),
        "sh failed ({:?}): {}\nline: {}",
        out.status,
        out.stderr_str(),
        &line[..line.len().min(2000)]
    );
    out.stdout
}

fn split_nul(out: &[u8]) -> Vec<String> {
    let mut words: Vec<String> = out
        .split(|b| *b == 0)
        .map(|w| String::from_utf8(w.to_vec()).expect("utf-8 back"))
        .collect();
    assert_eq!(words.pop().as_deref(), Some(""), "output ends with NUL");
    words
}

/// `printf '%s\0' VALUES...` as one quoted line; the batch is cut where the
/// line would pass `LINE_LIMIT`.
fn printf_lines(values: &[String]) -> Vec<(String, &[String])> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < values.len() {
        let mut end = start;
        let mut size = 0;
        while end < values.len() && (end == start || size + values[end].len() * 4 < LINE_LIMIT) {
            size += values[end].len() * 4 + 3;
            end += 1;
        }
        let mut argv = commands::argv(["printf", "%s\\0"]);
        argv.extend(values[start..end].iter().cloned());
        out.push((commands::shell(&argv), &values[start..end]));
        start = end;
    }
    out
}

/// The first value that did not arrive as sent, alone (not the whole batch).
fn same(got: &[String], sent: &[String], how: &str) -> Result<(), TestCaseError> {
    if let Some(i) = (0..sent.len()).find(|&i| got.get(i) != Some(&sent[i])) {
        return Err(TestCaseError::fail(format!(
            "through {how}, value {i} of {} arrived as {:?}, sent {:?} ({} values back)",
            sent.len(),
            got.get(i),
            sent[i],
            got.len()
        )));
    }
    if got.len() != sent.len() {
        return Err(TestCaseError::fail(format!(
            "through {how}, {} values back for {} sent",
            got.len(),
            sent.len()
        )));
    }
    Ok(())
}

#[test]
fn command_line_words_arrive_byte_for_byte_through_sh_and_bash() {
    let rt = runtime();
    let cases = total_values().div_ceil(BATCH) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let checked = std::cell::Cell::new(0usize);
    runner
        .run(&vec(hostile(), BATCH), |values| {
            for (i, (line, batch)) in printf_lines(&values).into_iter().enumerate() {
                let got = split_nul(&sh(&rt, line.clone(), None));
                same(&got, batch, "sh")?;
                // Once in a while, the same line nested in `bash -c` (the
                // login shell sshd hands the line to on a host).
                if i == 0 {
                    let nested = commands::shell(&commands::argv(["bash", "-c", &line]));
                    if nested.len() < 120_000 {
                        let got = split_nul(&sh(&rt, nested, None));
                        same(&got, batch, "bash -c")?;
                    }
                }
                checked.set(checked.get() + batch.len());
            }
            Ok(())
        })
        .unwrap();
    let checked = checked.get();
    assert!(checked >= total_values(), "checked {checked} values");
    eprintln!("{checked} values arrived byte for byte");
}

/// A value a Docker env file carries: no newline, no NUL, no final `\r`.
fn env_value() -> impl Strategy<Value = String> {
    hostile().prop_map(|s| s.replace('\n', "").trim_end_matches('\r').to_string())
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A project folder with a template of its own: each variable `vN` is
/// rendered alone into the file `vN.txt`.
fn project(
    dir: &Path,
    env: &[String],
    vars: &[String],
    volume_path: &str,
    data_path: &str,
) -> std::path::PathBuf {
    let tpl = dir.join("tpl");
    std::fs::create_dir_all(&tpl).unwrap();
    let mut manifest = String::from("description = \"hostile values\"\nport = 8080\n");
    for (i, _) in vars.iter().enumerate() {
        manifest.push_str(&format!("[vars.v{i}]\ndoc = \"value {i}\"\n"));
        std::fs::write(tpl.join(format!("v{i}.txt")), format!("{{{{ v{i} }}}}")).unwrap();
    }
    std::fs::write(tpl.join("template.toml"), manifest).unwrap();
    std::fs::write(tpl.join("Dockerfile"), "FROM debian:bookworm\n").unwrap();
    let env_table: Vec<String> = env
        .iter()
        .enumerate()
        .map(|(i, v)| format!("E{i} = {}", toml_str(v)))
        .collect();
    let var_table: Vec<String> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| format!("v{i} = {}", toml_str(v)))
        .collect();
    let hosts = format!(
        "[project]\nname = \"hostile\"\n\n[hosts.h1]\naddress = \"10.215.9.10\"\n\n\
         [data.store]\nhost = \"h1\"\npaths = [{data}]\n\n\
         [services.app]\nhost = \"h1\"\ntemplate = \"./tpl\"\npublish = [\"8080\"]\n\
         volumes = [{vol}]\nvolumes_from = [\"store\"]\nenv = {{ {env} }}\nvars = {{ {vars} }}\n",
        data = toml_str(data_path),
        vol = toml_str(&format!("data:{volume_path}")),
        env = env_table.join(", "),
        vars = var_table.join(", "),
    );
    let path = dir.join("hosts.toml");
    std::fs::write(&path, hosts).unwrap();
    path
}

fn plan_of(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, String> {
    let loaded = load::load(path, env, Generate::Placeholder).map_err(|d| {
        d.iter()
            .map(|d| format!("{}: {}", d.key_path, d.message))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    plan::build(&loaded, &[]).map_err(|d| {
        d.iter()
            .map(|d| format!("{}: {}", d.key_path, d.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Docker's env-file reading (opts/envfile.go): lines split on `\n`, a
/// final `\r` dropped, `NAME=value` split at the first `=`.
fn docker_env_file(text: &[u8]) -> BTreeMap<String, String> {
    let text = std::str::from_utf8(text).expect("an env file is UTF-8");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Where the test unpacks what would go to `/var/lib/provision/...`.
fn local_dir(tmp: &Path, remote: &str) -> String {
    format!("{}{remote}", tmp.display())
}

#[test]
fn env_values_template_vars_and_paths_arrive_byte_for_byte_through_the_planner() {
    let rt = runtime();
    let cases = (total_values() / 2000).max(16) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        vec(env_value(), 1..60),
        vec(hostile(), 1..60),
        hostile(),
        hostile(),
    );
    runner
        .run(&strategy, |(env, vars, vol, data)| {
            let dir = tempfile::tempdir().unwrap();
            let volume_path = format!("/{}", vol.replace(':', ""));
            let data_path = format!("/{data}");
            let path = project(dir.path(), &env, &vars, &volume_path, &data_path);
            let plan = plan_of(&path, &|_| None).map_err(TestCaseError::fail)?;
            let steps = &plan.hosts[0].steps;
            let mut seen_env = false;
            let mut seen_vars = false;
            for step in steps {
                for action in &step.actions {
                    match action {
                        Action::Upload {
                            dir: remote, files, ..
                        } => {
                            // The executor's own upload: a tar of the files,
                            // unpacked by `commands::untar_into` in a real sh.
                            let target = local_dir(dir.path(), remote);
                            let tar = tar_of(files).unwrap();
                            sh(&rt, commands::untar_into(&target), Some(tar));
                            for f in files {
                                let got = std::fs::read(format!("{target}/{}", f.path)).unwrap();
                                prop_assert_eq!(&got, &f.data, "{}", f.path);
                            }
                            if step.kind() == StepKind::Run {
                                seen_env = true;
                                let got = std::fs::read(format!("{target}/env")).unwrap();
                                let read = docker_env_file(&got);
                                for (i, v) in env.iter().enumerate() {
                                    prop_assert_eq!(read.get(&format!("E{i}")), Some(v));
                                }
                            } else {
                                seen_vars = true;
                                for (i, v) in vars.iter().enumerate() {
                                    let got = std::fs::read(format!("{target}/v{i}.txt")).unwrap();
                                    prop_assert_eq!(String::from_utf8(got).unwrap(), v.clone());
                                }
                            }
                        }
                        Action::Run { line }
                            if line.starts_with("docker run")
                                || line.starts_with("docker create") =>
                        {
                            // The planned line, with `docker` a function that
                            // prints its argv.
                            let probe = format!("docker() {{ printf '%s\\0' \"$@\"; }}; {line}");
                            let argv = split_nul(&sh(&rt, probe, None));
                            if line.starts_with("docker run") {
                                let i = argv.iter().position(|w| w == "--volume").unwrap();
                                prop_assert_eq!(&argv[i + 1], &format!("data:{volume_path}"));
                            } else {
                                let i = argv.iter().position(|w| w == "-v").unwrap();
                                prop_assert_eq!(&argv[i + 1], &data_path);
                            }
                        }
                        _ => {}
                    }
                }
            }
            prop_assert!(seen_env && seen_vars);
            Ok(())
        })
        .unwrap();
}

#[test]
fn values_a_docker_env_file_cannot_carry_are_refused_by_the_planner() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("a\nb", "a newline"),
        ("line\n", "a newline"),
        ("a\0b", "a NUL character"),
        ("value\r", "a carriage return at its end"),
        ("\r\n", "a newline"),
    ];
    for (value, what) in cases {
        let path = project(dir.path(), &[value.to_string()], &[], "/data", "/store");
        let err = plan_of(&path, &|_| None).unwrap_err();
        assert!(
            err.contains("services.app.env.E0") && err.contains(what),
            "{value:?}: {err}"
        );
    }
    // A carriage return inside a value is carried: only a final one is lost.
    let path = project(dir.path(), &["a\rb".into()], &[], "/data", "/store");
    plan_of(&path, &|_| None).unwrap();

    // Secrets take the same check, wherever their value comes from.
    let hosts = "[project]\nname = \"hostile\"\n[hosts.h1]\naddress = \"10.215.9.10\"\n\
                 [services.redis]\nhost = \"h1\"\ntemplate = \"redis\"\nsecrets = [\"TOKEN\"]\n";
    let path = dir.path().join("secret.toml");
    std::fs::write(&path, hosts).unwrap();
    for bad in ["x\ny", "x\0y", "x\r"] {
        let err = plan_of(&path, &|n| (n == "TOKEN").then(|| bad.to_string())).unwrap_err();
        assert!(err.contains("services.redis.env.TOKEN"), "{bad:?}: {err}");
    }
    plan_of(&path, &|n| (n == "TOKEN").then(|| "$(id)`x`'\"".into())).unwrap();

    // A NUL in a container path cannot be carried by a command line.
    for (vol, data) in [("/da\0ta", "/store"), ("/data", "/st\0re")] {
        let path = project(dir.path(), &[], &[], vol, data);
        let err = plan_of(&path, &|_| None).unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }
}

/// The app fetch's curl config (`curl -K`) quotes its values: real curl
/// reads each hostile value back whole, and one that tries to end its line
/// and start another option starts nothing. Only `file://` URLs: no traffic.
#[test]
fn curl_config_values_are_read_back_whole_by_real_curl() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.txt");
    std::fs::write(&src, "payload").unwrap();
    let url = format!("file://{}", src.display());
    let q = commands::curl_config_quote;
    let names = [
        "a \"q\" b",
        "back\\slash\\",
        "$(touch pwned)`id`",
        "tab\there",
        "☃ ünï",
        "=starts",
        ":colon",
        "'single'",
    ];
    for (i, name) in names.iter().enumerate() {
        let out = dir.path().join(format!("{i}-{name}"));
        let cfg = format!(
            "url = {}\noutput = {}\nfail\nsilent\nshow-error\n",
            q(&url),
            q(&out.display().to_string())
        );
        let cfg_path = dir.path().join("curl.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let run = std::process::Command::new("curl")
            .arg("-K")
            .arg(&cfg_path)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "payload",
            "{name:?}"
        );
    }
    // A value that tries to close its quotes and add `output = "..."` (with
    // plain `"{value}"` quoting curl would write that file).
    let pwned = dir.path().join("pwned");
    for tail in ["\"\noutput = \"", "\\\"\noutput = \"", "\r\noutput = \""] {
        let evil = format!("{url}{tail}{}", pwned.display());
        let cfg = format!("url = {}\nsilent\n", q(&evil));
        let cfg_path = dir.path().join("evil.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let _ = std::process::Command::new("curl")
            .arg("-K")
            .arg(&cfg_path)
            .arg("-o")
            .arg(dir.path().join("ignored"))
            .output()
            .unwrap();
        assert!(!pwned.exists(), "{tail:?} started another curl option");
    }
}

// ---- inventory parsing never panics ---------------------------------------

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("hosts.toml")).unwrap()
}

fn parse(text: &str) {
    let _ = provision::inventory::parse(Path::new("hosts.toml"), text);
}

/// TOML values of every kind, hostile strings included.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile().prop_map(|s| toml_str(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        vec(hostile(), 0..4).prop_map(|v| format!(
            "[{}]",
            v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
        )),
        (hostile(), hostile()).prop_map(|(k, v)| format!(
            "{{ {} = {} }}",
            toml_str(&k),
            toml_str(&v)
        )),
        Just("\"0:0\"".to_string()),
        Just("\"99999\"".to_string()),
        Just("\"a:/b:ro:x\"".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    SetValue(usize, String),
    DeleteLine(usize),
    DuplicateLine(usize),
    Insert(usize, String),
    Truncate(usize),
    RenameKey(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), toml_value()).prop_map(|(i, v)| Mutation::SetValue(i, v)),
        2 => any::<usize>().prop_map(Mutation::DeleteLine),
        2 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => (any::<usize>(), hostile()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), "[a-z_.\"]{1,12}").prop_map(|(i, k)| Mutation::RenameKey(i, k)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match m {
        Mutation::SetValue(i, v) => {
            let assignments: Vec<usize> = (0..n).filter(|&j| lines[j].contains(" = ")).collect();
            if assignments.is_empty() {
                return lines.join("\n");
            }
            let j = assignments[i % assignments.len()];
            let key = lines[j].split(" = ").next().unwrap().to_string();
            lines[j] = format!("{key} = {v}");
        }
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::RenameKey(i, k) => {
            let assignments: Vec<usize> = (0..n).filter(|&j| lines[j].contains(" = ")).collect();
            if assignments.is_empty() {
                return lines.join("\n");
            }
            let j = assignments[i % assignments.len()];
            let value = lines[j].split_once(" = ").unwrap().1.to_string();
            lines[j] = format!("{k} = {value}");
        }
        Mutation::Insert(i, s) => {
            let text = lines.join("\n");
            let mut at = i % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return format!("{}{s}{}", &text[..at], &text[at..]);
        }
        Mutation::Truncate(i) => {
            let text = lines.join("\n");
            let mut at = i % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(Config { cases: 3000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn no_text_makes_the_inventory_panic(text in prop_oneof![
        any::<String>(),
        "(\\[[a-z.]{0,20}\\]\n|[a-z_]{1,10} = (\"[^\"]{0,20}\"|[0-9]{1,6}|\\[\\]|\\{\\})\n){0,20}",
    ]) {
        parse(&text);
    }
}

proptest! {
    #![proptest_config(Config { cases: 600, failure_persistence: None, ..Config::default() })]

    /// Mutations of the shipped playground: parsed, and when accepted,
    /// loaded and planned too; an accepted plan's lines never hold a NUL.
    #[test]
    fn no_mutation_of_a_valid_file_makes_anything_panic(ms in vec(mutation(), 1..4)) {
        let mut text = shipped();
        for m in &ms {
            text = apply(&text, m);
        }
        parse(&text);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        std::fs::write(&path, &text).unwrap();
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
            dir.path().join("examples"),
        ).unwrap();
        let secrets = |n: &str| Some(format!("secret-{n}"));
        if let Ok(plan) = plan_of(&path, &secrets) {
            for step in plan.hosts.iter().flat_map(|h| &h.steps) {
                for a in &step.actions {
                    if let Action::Run { line } | Action::Fetch { line, .. } = a {
                        prop_assert!(!line.contains('\0'), "{line:?}");
                    }
                }
            }
        }
    }
}

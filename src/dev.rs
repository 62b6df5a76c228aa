//! Dev mode's pure parts: the development container's environment and run
//! line, what a sync sends and removes (by content hash, not by mtime),
//! and what a change asks of the server. `cli/dev.rs` runs them.

use std::collections::BTreeMap;

use crate::commands::{argv, shell, PROJECT_LABEL, SERVICE_LABEL, SPEC_LABEL};
use crate::templates::ContextFile;

/// The dev container's name beside the service's.
pub fn container_name(container: &str) -> String {
    format!("{container}-dev")
}

/// The spec label of a dev container: never a release's, so a run after a
/// dev session that did not end cleanly replaces it.
pub const DEV_SPEC: &str = "dev";

/// Where the app lives in the image (the rails template's `COPY app/ /app/`).
pub const APP_DIR: &str = "/app";

/// The production environment turned into development's: RAILS_ENV,
/// one process (code reloading per request), and `DATABASE_URL` pointing
/// at its own database, `DB_development`. Returns the text and that
/// database's (user, name), when there is a database.
pub fn dev_env(production: &str) -> (String, Option<(String, String)>) {
    let mut db = None;
    let mut out = String::new();
    for line in production.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "RAILS_ENV" | "WEB_CONCURRENCY" | "RAILS_LOG_TO_STDOUT" => continue,
            "DATABASE_URL" => {
                let (url, user_db) = dev_database_url(v);
                db = user_db;
                out.push_str(&format!("DATABASE_URL={url}\n"));
            }
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out.push_str("RAILS_ENV=development\nWEB_CONCURRENCY=0\nRAILS_LOG_TO_STDOUT=1\n");
    (out, db)
}

/// `postgres://USER:PW@HOST:PORT/DB?x` -> the same with `DB_development`,
/// and (USER, DB_development).
fn dev_database_url(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let Some(slash) = rest.find('/') else {
        return (url.to_string(), None);
    };
    let (authority, path) = rest.split_at(slash);
    let (db, query) = match path[1..].split_once('?') {
        Some((d, q)) => (d, format!("?{q}")),
        None => (&path[1..], String::new()),
    };
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| u.split(':').next().unwrap_or(u))
        .unwrap_or("");
    let dev = format!("{db}_development");
    (
        format!("{scheme}://{authority}/{dev}{query}"),
        Some((user.to_string(), dev)),
    )
}

/// `docker run` of the dev container: the production image and network,
/// the dev env file, and the server started in development after its
/// migrations. No network alias: nothing finds it before the switch.
pub fn run(project: &str, service: &str, container: &str, image: &str, env_file: &str) -> String {
    shell(&argv([
        "docker".to_string(),
        "run".into(),
        "--detach".into(),
        "--name".into(),
        container_name(container),
        "--hostname".into(),
        format!("{service}-dev"),
        "--network".into(),
        project.into(),
        "--label".into(),
        format!("{PROJECT_LABEL}={project}"),
        "--label".into(),
        format!("{SERVICE_LABEL}={service}"),
        "--label".into(),
        format!("{SPEC_LABEL}={DEV_SPEC}"),
        "--env-file".into(),
        env_file.into(),
        // The files it syncs are written as the app's user.
        "--user".into(),
        "0".into(),
        image.into(),
        "sh".into(),
        "-c".into(),
        format!(
            "chown -R rails:rails {APP_DIR} && cd {APP_DIR} && rm -f tmp/pids/server.pid && \
             exec setpriv --reuid=rails --regid=rails --init-groups env HOME={APP_DIR} \
             sh -c 'bin/rails db:migrate && exec bundle exec puma -C config/puma.rb'"
        ),
    ]))
}

/// The dev database on the PostGIS container, created when missing, with
/// PostGIS enabled (as the production one has it).
pub fn create_database(postgis: &str, user: &str, db: &str) -> String {
    let psql = |sql: &str, database: &str| {
        shell(&argv([
            "docker",
            "exec",
            "-u",
            "postgres",
            postgis,
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database,
            "-tAc",
            sql,
        ]))
    };
    let exists = format!("SELECT 1 FROM pg_database WHERE datname = '{db}'");
    format!(
        "if [ \"$({})\" != 1 ]; then {} && {}; fi",
        psql(&exists, "postgres"),
        psql(
            &format!("CREATE DATABASE \"{db}\" OWNER \"{user}\""),
            "postgres"
        ),
        psql("CREATE EXTENSION IF NOT EXISTS postgis", db)
    )
}

/// `sha256sum` of every file under the app folder in the container, as
/// `HASH  ./PATH` lines (the folders the sync never sends are skipped).
pub fn remote_hashes(dev: &str) -> String {
    shell(&argv([
        "docker",
        "exec",
        dev,
        "sh",
        "-c",
        "cd /app && find . \\( -path ./tmp -o -path ./log -o -path ./.git -o -path ./node_modules \\) -prune -o -type f -print0 | xargs -0 -r sha256sum",
    ]))
}

/// [`remote_hashes`]' answer: path (relative to the app folder) -> hash.
pub fn parse_hashes(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (hash, path) = l.split_once("  ")?;
            Some((path.trim_start_matches("./").to_string(), hash.to_string()))
        })
        .collect()
}

/// The app's files as the build context has them (`app/PATH`), keyed by
/// their path in the app folder, with their hash.
pub fn local_hashes(files: &[ContextFile]) -> BTreeMap<String, (String, &ContextFile)> {
    files
        .iter()
        .filter_map(|f| {
            let rel = f.path.strip_prefix("app/")?;
            Some((rel.to_string(), (crate::plan::hash_bytes(&f.data), f)))
        })
        .collect()
}

/// What one sync does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sync {
    /// Paths to send (new or changed).
    pub send: Vec<String>,
    /// Paths to remove (gone here, there before).
    pub remove: Vec<String>,
}

/// Compare what is here with what is there. A file only there is removed
/// only when `known` (the files here at the last sync) says it came from
/// here: a file the container made (db/schema.rb, Gemfile.lock) stays.
pub fn diff(
    here: &BTreeMap<String, String>,
    there: &BTreeMap<String, String>,
    known: &std::collections::BTreeSet<String>,
) -> Sync {
    let send = here
        .iter()
        .filter(|(p, h)| there.get(*p) != Some(h))
        .map(|(p, _)| p.clone())
        .collect();
    let remove = there
        .keys()
        .filter(|p| !here.contains_key(*p) && known.contains(*p))
        .cloned()
        .collect();
    Sync { send, remove }
}

/// What a sync asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum After {
    /// Rails reloads app code by itself.
    Nothing,
    /// config/ changed: the server starts again.
    Restart,
    /// The Gemfile changed: `bundle install`, then a restart.
    Bundle,
}

pub fn after(paths: &[String]) -> After {
    paths
        .iter()
        .map(|p| {
            if p == "Gemfile" || p == "Gemfile.lock" {
                After::Bundle
            } else if p.starts_with("config/") {
                After::Restart
            } else {
                After::Nothing
            }
        })
        .max()
        .unwrap_or(After::Nothing)
}

/// Unpack a tar on stdin into the app folder as the app's user, with the
/// time of arrival as mtime (Rails' file watcher compares mtimes).
pub fn untar(dev: &str) -> String {
    shell(&argv([
        "docker", "exec", "-i", "-u", "rails", dev, "tar", "-x", "-m", "-C", APP_DIR, "-f", "-",
    ]))
}

/// Remove `paths` (relative to the app folder).
pub fn remove(dev: &str, paths: &[String]) -> String {
    let mut a = argv([
        "docker", "exec", "-u", "rails", "-w", APP_DIR, dev, "rm", "-f", "--",
    ]);
    a.extend(paths.iter().cloned());
    shell(&a)
}

/// `bundle install` against the gems the image has.
pub fn bundle(dev: &str) -> String {
    shell(&argv([
        "docker", "exec", "-u", "rails", "-w", APP_DIR, dev, "bundle", "install", "--local",
    ]))
}

/// Exits 0 when the host has `image`.
pub fn image_present(image: &str) -> String {
    format!(
        "{} >/dev/null",
        shell(&argv(["docker", "image", "inspect", image]))
    )
}

/// Remove `container` if there is one (quietly: none is no error).
pub fn remove_container(container: &str) -> String {
    format!(
        "{} >/dev/null 2>&1 || true",
        shell(&crate::commands::remove_container(container))
    )
}

/// The spec label of `container`, empty when there is none.
pub fn spec_of(container: &str) -> String {
    format!(
        "{} 2>/dev/null || true",
        shell(&argv([
            "docker".to_string(),
            "inspect".into(),
            "--format".into(),
            format!("{{{{index .Config.Labels \"{SPEC_LABEL}\"}}}}"),
            container.into(),
        ]))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_environment_has_its_own_database_and_one_process() {
        let (env, db) = dev_env(
            "DATABASE_URL=postgres://app:s3cr%40t@10.0.0.2:5432/app\nRAILS_ENV=production\nREDIS_URL=redis://redis:6379/0\nWEB_CONCURRENCY=2\n",
        );
        assert!(
            env.contains("DATABASE_URL=postgres://app:s3cr%40t@10.0.0.2:5432/app_development\n")
        );
        assert!(env.contains("REDIS_URL=redis://redis:6379/0\n"));
        assert!(env.contains("RAILS_ENV=development\n"));
        assert!(env.contains("WEB_CONCURRENCY=0\n"));
        assert!(!env.contains("production"));
        assert_eq!(db, Some(("app".into(), "app_development".into())));
    }

    #[test]
    fn a_sync_sends_what_differs_and_removes_only_what_it_sent() {
        let m = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let here = m(&[("a.rb", "1"), ("b.rb", "2"), ("new.rb", "3")]);
        let there = m(&[
            ("a.rb", "1"),
            ("b.rb", "9"),
            ("gone.rb", "4"),
            ("Gemfile.lock", "5"),
        ]);
        let known = ["gone.rb".to_string()].into_iter().collect();
        assert_eq!(
            diff(&here, &there, &known),
            Sync {
                send: vec!["b.rb".into(), "new.rb".into()],
                remove: vec!["gone.rb".into()],
            }
        );
    }

    #[test]
    fn a_gemfile_asks_for_bundle_config_for_a_restart() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(after(&p(&["app/controllers/x.rb"])), After::Nothing);
        assert_eq!(after(&p(&["config/routes.rb", "app/x.rb"])), After::Restart);
        assert_eq!(after(&p(&["config/routes.rb", "Gemfile"])), After::Bundle);
    }

    #[test]
    fn the_lines_quote_their_words_once() {
        assert_eq!(
            spec_of("p-rails"),
            "docker inspect --format '{{index .Config.Labels \"provision.spec\"}}' p-rails 2>/dev/null || true"
        );
        assert_eq!(
            remove_container("p-rails-dev"),
            "docker rm --force p-rails-dev >/dev/null 2>&1 || true"
        );
        assert_eq!(
            image_present("p-rails:abc"),
            "docker image inspect p-rails:abc >/dev/null"
        );
    }

    #[test]
    fn remote_hashes_are_read_by_path() {
        let h = parse_hashes("abc  ./app/x.rb\ndef  ./Gemfile\n");
        assert_eq!(h["app/x.rb"], "abc");
        assert_eq!(h["Gemfile"], "def");
    }
}

//! The two-host Rails stack most end-to-end files provision, as a value:
//! `web` runs redis, rails and nginx, `db` runs PostGIS; and what a user
//! sees of it (the page through nginx, rows in PostGIS, when a container
//! started).

#![allow(dead_code)] // each test file uses its own part of the lab

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::http::{http_until, number_after};
use super::lab::Lab;

/// How hosts.toml names `db`.
#[derive(Clone, Copy, PartialEq)]
pub enum Db {
    /// A local machine with systemd.
    Machine,
    /// A local machine with no init system (sshd as its command).
    MachineNoInit,
    /// The same machine as a plain SSH host (no run starts it again).
    Plain,
}

/// hosts.toml of the stack; start from [`Lab::stack`].
#[derive(Clone)]
pub struct Stack {
    pub project: String,
    pub web: Ipv4Addr,
    pub db: Ipv4Addr,
    pub db_as: Db,
    /// Secrets generated and kept by provision; else given in the env.
    pub generate: bool,
    /// A third secret, REPO_TOKEN, for rails.
    pub repo_token: bool,
    /// redis' TZ (a harmless setting that changes its spec).
    pub redis_tz: Option<String>,
    /// nginx' worker_connections.
    pub nginx_workers: Option<u32>,
    /// `[app] source` (relative to hosts.toml).
    pub app: String,
    /// More lines under `[services.rails]`.
    pub rails_extra: String,
}

impl Lab {
    /// The stack with web at .10 and db (systemd) at .11, secrets generated.
    pub fn stack(&self) -> Stack {
        Stack {
            project: self.project.clone(),
            web: self.addr(10),
            db: self.addr(11),
            db_as: Db::Machine,
            generate: true,
            repo_token: false,
            redis_tz: None,
            nginx_workers: None,
            app: "examples/rails_app".into(),
            rails_extra: String::new(),
        }
    }

    /// The stack with its own copy of the example app in the lab's `app/`
    /// (for tests that edit the app's code).
    pub fn stack_with_app_copy(&self) -> Stack {
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(super::lab::repo().join("examples/rails_app"))
            .arg(self.path().join("app"))
            .status()
            .unwrap();
        assert!(copied.success(), "cp -r of the example app");
        Stack {
            app: "app".into(),
            ..self.stack()
        }
    }

    /// The page through nginx on `web` (records a visit), polled for 120 s.
    pub fn page(&self, web: impl Display) -> String {
        let url = format!("http://{web}/");
        http_until(&url, "Total visits", Duration::from_secs(120))
    }

    /// [`Lab::page`]: the total number of visits it shows.
    pub fn visit(&self, web: impl Display) -> u64 {
        number_after(&self.page(web), "total")
    }

    /// One value from `psql -tAc SQL` in PostGIS on `db`.
    pub fn psql(&self, db: impl Display, sql: &str) -> String {
        let container = self.container("postgis");
        let script = format!("docker exec -u postgres {container} psql -X -d app -tAc \"{sql}\"");
        self.ssh_ok(db, &script)
    }

    /// Rows of the app's visits table in PostGIS on `db`.
    pub fn rows(&self, db: impl Display) -> u64 {
        let line = self.psql(db, "select count(*) from visits");
        line.parse()
            .unwrap_or_else(|_| panic!("psql said {line:?}"))
    }

    /// When a service's container on `host` last started.
    pub fn started_at(&self, host: impl Display, service: &str) -> String {
        let script = format!(
            "docker inspect -f '{{{{.State.StartedAt}}}}' {}",
            self.container(service)
        );
        self.ssh_ok(host, &script)
    }

    /// The environment of a service's container on `host`, a line a variable.
    pub fn container_env(&self, host: impl Display, service: &str) -> String {
        let script = format!(
            "docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' {}",
            self.container(service)
        );
        self.ssh_ok(host, &script)
    }
}

impl Stack {
    pub fn toml(&self) -> String {
        let db = match self.db_as {
            Db::Machine => format!("machine = \"local\"\naddress = \"{}\"", self.db),
            Db::MachineNoInit => {
                format!(
                    "machine = \"local\"\ninit = \"none\"\naddress = \"{}\"",
                    self.db
                )
            }
            Db::Plain => format!(
                "address = \"{}\"\nidentity = \".provision/id_ed25519\"",
                self.db
            ),
        };
        let mut secrets = vec!["PG_PASSWORD", "SECRET_KEY_BASE"];
        if self.repo_token {
            secrets.push("REPO_TOKEN");
        }
        let generate = if self.generate {
            "generate = true\n"
        } else {
            ""
        };
        let declared: String = secrets
            .iter()
            .map(|s| format!("[secrets.{s}]\n{generate}\n"))
            .collect();
        let rails_secrets = secrets[1..]
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let redis_env = match &self.redis_tz {
            Some(tz) => format!("env = {{ TZ = \"{tz}\" }}\n"),
            None => String::new(),
        };
        let nginx_vars = match self.nginx_workers {
            Some(n) => format!("vars = {{ worker_connections = {n} }}\n"),
            None => String::new(),
        };
        format!(
            r#"[project]
name = "{project}"

[app]
source = "{app}"

{declared}[hosts.web]
machine = "local"
address = "{web}"

[hosts.db]
{db}

[services.postgis]
host = "db"
template = "postgis"
publish = ["5432"]
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.redis]
host = "web"
template = "redis"
volumes = ["redis-data:/data"]
{redis_env}
[services.rails]
host = "web"
template = "rails"
uses = ["postgis", "redis"]
secrets = [{rails_secrets}]
env = {{ RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1" }}
{rails_extra}
[services.nginx]
host = "web"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
{nginx_vars}"#,
            project = self.project,
            web = self.web,
            app = self.app,
            rails_extra = self.rails_extra,
        )
    }

    /// Write it as the lab's hosts.toml.
    pub fn write(&self, lab: &Lab) {
        lab.write("hosts.toml", &self.toml());
    }
}

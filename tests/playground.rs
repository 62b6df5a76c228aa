//! The mission's main path, end to end, from blank local machines:
//! `provision --hosts hosts.toml` leaves a working Rails app on host 1 whose
//! database is PostGIS on host 2. Everything asserted is what a user sees: a
//! page through Nginx, a row in PostGIS on the other host, a session in
//! Redis, zero changes on a rerun, a data volume that survives, a port that a
//! third machine cannot reach.
//!
//! Traffic goes only to the machines this test creates (its own /24 in
//! 10.216.0.0/16). Under CI=true a missing Docker engine fails the test.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use provision::machines::{Init, MachineSpec, Playground};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

struct Lab {
    dir: tempfile::TempDir,
    project: String,
    net: [u8; 3],
    extra: Vec<MachineSpec>,
}

impl Lab {
    fn new() -> Lab {
        if Command::new("docker")
            .arg("info")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            // .ci/run starts dockerd; without CI, say so loudly and fail too:
            // this test is the product's main path.
            panic!("tests/playground.rs needs a running local Docker engine (start dockerd)");
        }
        let pid = std::process::id();
        let net = [10, 216, (20 + pid % 200) as u8];
        let project = format!("pve2e-{pid}");
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo().join("examples"), dir.path().join("examples")).unwrap();
        let lab = Lab {
            dir,
            project,
            net,
            extra: Vec::new(),
        };
        lab.write_hosts(&BTreeMap::new());
        lab
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last)
    }

    /// The shipped playground, with this lab's project and addresses; host
    /// `web` runs systemd, host `db` no init system (both install paths).
    fn write_hosts(&self, nginx_vars: &BTreeMap<&str, &str>) {
        let shipped = std::fs::read_to_string(repo().join("hosts.toml")).unwrap();
        let vars: Vec<String> = nginx_vars
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let text = shipped
            .replace(
                "name = \"playground\"",
                &format!("name = \"{}\"", self.project),
            )
            .replace("192.168.33.10", &self.addr(10).to_string())
            .replace(
                "192.168.33.11",
                &format!("{}\"\ninit = \"none", self.addr(11)),
            )
            .replace("forward = [\"8080:80\", \"5601:5601\"]\n", "")
            .replace(
                "[services.nginx]\nhost = \"web\"\ntemplate = \"nginx\"\n",
                &format!(
                    "[services.nginx]\nhost = \"web\"\ntemplate = \"nginx\"\nvars = {{ {} }}\n",
                    vars.join(", ")
                ),
            );
        std::fs::write(self.dir.path().join("hosts.toml"), text).unwrap();
    }

    fn provision(&self, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let out = Command::new(BIN)
            .current_dir(self.dir.path())
            .args(["--hosts", "hosts.toml"])
            .args(args)
            .output()
            .unwrap();
        (out, started.elapsed())
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join(".provision")
    }

    fn ssh(&self, address: Ipv4Addr, script: &str) -> Output {
        Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.state().join("known_hosts").display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
            ])
            .arg(self.state().join("id_ed25519"))
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("root@{address}"))
            .arg(script)
            .output()
            .unwrap()
    }

    fn ssh_ok(&self, address: Ipv4Addr, script: &str) -> String {
        let out = self.ssh(address, script);
        assert!(
            out.status.success(),
            "`{script}` on {address}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    /// StartedAt of each service's container on its host.
    fn started_at(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (service, host) in [("redis", 10), ("rails", 10), ("nginx", 10), ("postgis", 11)] {
            let t = self.ssh_ok(
                self.addr(host),
                &format!(
                    "docker inspect -f '{{{{.State.StartedAt}}}}' {}",
                    self.container(service)
                ),
            );
            out.insert(service.to_string(), t);
        }
        out
    }

    /// GET the page through Nginx on host 1, keeping the session cookie.
    fn visit(&self) -> String {
        let jar = self.dir.path().join("cookies");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "10", "-c"])
                .arg(&jar)
                .arg("-b")
                .arg(&jar)
                .arg(format!("http://{}/", self.addr(10)))
                .output()
                .unwrap();
            let body = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() && body.contains("Total visits") {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no page through nginx: {body} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn rows_in_postgis(&self) -> u64 {
        let sql = "SELECT count(*) FROM visits WHERE ST_X(location::geometry) IS NOT NULL";
        let line = self.ssh_ok(
            self.addr(11),
            &format!(
                "docker exec -u postgres {} psql -d app -tAc \"{sql}\"",
                self.container("postgis")
            ),
        );
        line.parse()
            .unwrap_or_else(|_| panic!("psql said {line:?}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .current_dir(self.dir.path())
            .args(["--hosts", "hosts.toml", "down", "--volumes"])
            .output();
        if !self.extra.is_empty() {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let p = Playground::new(self.state());
            let _ = rt.block_on(p.down(&self.extra, true));
        }
    }
}

fn same_state_both_ways(lab: &Lab) {
    use provision::probe::HostState;
    use provision::transport::{Exec, SshTransport, Transport};
    let env = |_: &str| None;
    let loaded = provision::load::load(
        &lab.dir.path().join("hosts.toml"),
        &env,
        provision::secrets::Generate::Store,
    )
    .unwrap();
    let plan = provision::cli::build_plan(&loaded).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for hp in &plan.hosts {
        let host = loaded.inventory.host(&hp.host).unwrap();
        let bases: Vec<String> = hp.steps.iter().flat_map(|s| s.bases.clone()).collect();
        let (api, cli) = rt.block_on(async {
            let t = SshTransport::connect(provision::run::ssh_target(&loaded.inventory, host))
                .await
                .unwrap();
            let api = provision::docker_api::probe(&t, &plan.project, &bases)
                .await
                .expect("API probe over SSH in time")
                .expect("API probe over SSH");
            let out = t
                .exec(Exec::new(provision::commands::probe(&plan.project, &bases)))
                .await
                .unwrap();
            (HostState::parse(&api), HostState::parse(&out.stdout_str()))
        });
        let mut api = api;
        api.now = cli.now;
        assert_eq!(api, cli, "host {}: API and command probes differ", hp.host);
        assert!(!api.containers.is_empty());
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn number_after(page: &str, id: &str) -> u64 {
    let marker = format!("id=\"{id}\">");
    let rest = &page[page
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {page}"))
        + marker.len()..];
    rest[..rest.find('<').unwrap()].parse().unwrap()
}

#[test]
fn the_two_host_playground_end_to_end() {
    let mut lab = Lab::new();

    // 1. From blank machines: exit 0, a page through Nginx, the visit row in
    //    PostGIS on host 2, the session in Redis on host 1.
    let (out, cold) = lab.provision(&[]);
    assert_eq!(out.status.code(), Some(0), "first run:\n{}", text(&out));
    eprintln!("cold run from blank machines: {:.1} s", cold.as_secs_f64());
    let all = text(&out);
    assert!(
        all.contains("skipped fluentd"),
        "upstream services are skipped with a message:\n{all}"
    );
    let first = lab.visit();
    let second = lab.visit();
    assert!(second.contains("POINT("), "{second}");
    assert_eq!(
        number_after(&second, "session"),
        number_after(&first, "session") + 1,
        "the session is kept"
    );
    assert!(number_after(&second, "total") > number_after(&first, "total"));
    let rows = lab.rows_in_postgis();
    assert!(rows >= 2, "rows in PostGIS on host 2: {rows}");
    let keys = lab.ssh_ok(
        lab.addr(10),
        &format!("docker exec {} redis-cli --scan", lab.container("redis")),
    );
    assert!(keys.contains("session"), "session keys in redis: {keys}");
    // Rails reaches the DB host by its address.
    let env = lab.ssh_ok(
        lab.addr(10),
        &format!(
            "docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' {}",
            lab.container("rails")
        ),
    );
    assert!(
        env.contains(&format!("@{}:5432/app", lab.addr(11))),
        "DATABASE_URL: {env}"
    );

    // 2. A second run changes nothing.
    let before = lab.started_at();
    let (out, noop) = lab.provision(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Nothing changed"), "{}", text(&out));
    eprintln!("no-op rerun: {:.3} s", noop.as_secs_f64());
    assert_eq!(
        lab.started_at(),
        before,
        "a no-op run restarted a container"
    );

    // The probe through Docker's API socket sees what the command probe sees.
    same_state_both_ways(&lab);

    // 3. A changed nginx variable rebuilds and restarts nginx alone.
    lab.write_hosts(&BTreeMap::from([("worker_connections", "512")]));
    let (out, _) = lab.provision(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = lab.started_at();
    for service in ["redis", "rails", "postgis"] {
        assert_eq!(
            after[service], before[service],
            "{service} was restarted by an nginx change"
        );
    }
    assert_ne!(after["nginx"], before["nginx"], "nginx was not restarted");
    let conf = lab.ssh_ok(
        lab.addr(10),
        &format!(
            "docker exec {} cat /etc/nginx/nginx.conf",
            lab.container("nginx")
        ),
    );
    assert!(conf.contains("worker_connections 512"), "{conf}");
    lab.visit();

    // 4. The PostGIS container removed by hand: a rerun brings it back with
    //    every row.
    let rows = lab.rows_in_postgis();
    lab.ssh_ok(
        lab.addr(11),
        &format!("docker rm -f {}", lab.container("postgis")),
    );
    let (out, _) = lab.provision(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.rows_in_postgis(), rows, "rows lost with the container");
    let page = lab.visit();
    assert!(number_after(&page, "total") > rows);

    // 5. A third machine cannot reach host 2's PostgreSQL; host 1 can.
    let mut third = MachineSpec::new(&lab.project, "third", lab.addr(12));
    third.init = Init::None;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let playground = Playground::new(lab.state());
    rt.block_on(playground.up(std::slice::from_ref(&third)))
        .expect("third machine");
    lab.extra.push(third);
    let probe = format!(
        "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/5432' && echo open || echo closed",
        lab.addr(11)
    );
    assert_eq!(
        lab.ssh_ok(lab.addr(10), &probe),
        "open",
        "the app host must reach PostgreSQL"
    );
    assert_eq!(
        lab.ssh_ok(lab.addr(12), &probe),
        "closed",
        "a third machine reached PostgreSQL on host 2"
    );
}

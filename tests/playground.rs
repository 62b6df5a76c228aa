//! The mission's main path, end to end, from blank local machines:
//! `provision --hosts hosts.toml` leaves a working Rails app on host 1 whose
//! database is PostGIS on host 2. Everything asserted is what a user sees: a
//! page through Nginx, a row in PostGIS on the other host, a session in
//! Redis, zero changes on a rerun, a data volume that survives, a port that a
//! third machine cannot reach.
//!
//! Traffic goes only to the machines this test creates (its own /24 in
//! 10.216.0.0/16). Under CI=true a missing Docker engine fails the test.

mod support;

use std::collections::BTreeMap;

use provision::machines::Init;
use support::http::{http_until_jar, number_after};
use support::lab::Lab;

/// The shipped playground, with this lab's project and addresses; host
/// `web` runs systemd, host `db` no init system (both install paths).
fn write_hosts(lab: &Lab, nginx_vars: &BTreeMap<&str, &str>) {
    let vars: Vec<String> = nginx_vars
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let nginx = "[services.nginx]\nhost = \"web\"\ntemplate = \"nginx\"\n";
    let db = lab.addr(11).to_string();
    let text = lab
        .shipped_hosts()
        .replace(&format!("\"{db}\""), &format!("\"{db}\"\ninit = \"none\""))
        .replace(nginx, &format!("{nginx}vars = {{ {} }}\n", vars.join(", ")));
    lab.write("hosts.toml", &text);
}

/// StartedAt of each service's container on its host.
fn started_at(lab: &Lab) -> BTreeMap<String, String> {
    let hosts = [("redis", 10), ("rails", 10), ("nginx", 10), ("postgis", 11)];
    let at =
        |(service, host): (&str, u8)| (service.into(), lab.started_at(lab.addr(host), service));
    hosts.into_iter().map(at).collect()
}

/// GET the page through Nginx on host 1, keeping the session cookie.
fn visit(lab: &Lab) -> String {
    let (url, jar) = (
        format!("http://{}/", lab.addr(10)),
        lab.path().join("cookies"),
    );
    http_until_jar(
        &url,
        Some(&jar),
        "Total visits",
        std::time::Duration::from_secs(60),
    )
}

/// The nginx.conf the running Nginx container on host 1 has.
fn nginx_conf(lab: &Lab) -> String {
    lab.ssh_ok(
        lab.addr(10),
        &format!(
            "docker exec {} cat /etc/nginx/nginx.conf",
            lab.container("nginx")
        ),
    )
}

fn rows_in_postgis(lab: &Lab) -> u64 {
    let sql = "SELECT count(*) FROM visits WHERE ST_X(location::geometry) IS NOT NULL";
    lab.psql(lab.addr(11), sql).parse().unwrap()
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
            let api = provision::docker_api::probe(&t, &plan.project, &bases, false, None)
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

#[test]
fn the_two_host_playground_end_to_end() {
    let lab = Lab::new("pve2e", 216);
    write_hosts(&lab, &BTreeMap::new());

    // 1. From blank machines: exit 0, a page through Nginx, the visit row in
    //    PostGIS on host 2, the session in Redis on host 1.
    let out = lab.provision(&[]).expect(0, "first run");
    eprintln!("cold run from blank machines: {:.1} s", out.secs());
    let all = out.text();
    assert!(
        all.contains("skipped fluentd"),
        "upstream services are skipped with a message:\n{all}"
    );
    let first = visit(&lab);
    let second = visit(&lab);
    assert!(second.contains("POINT("), "{second}");
    assert_eq!(
        number_after(&second, "session"),
        number_after(&first, "session") + 1,
        "the session is kept"
    );
    assert!(number_after(&second, "total") > number_after(&first, "total"));
    let rows = rows_in_postgis(&lab);
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
    let before = started_at(&lab);
    let out = lab.provision(&[]).expect(0, "rerun");
    assert!(out.text().contains("Nothing changed"), "{}", out.text());
    eprintln!("no-op rerun: {:.3} s", out.secs());
    assert_eq!(
        started_at(&lab),
        before,
        "a no-op run restarted a container"
    );

    // The probe through Docker's API socket sees what the command probe sees.
    same_state_both_ways(&lab);

    // 3. A changed nginx variable rebuilds and restarts nginx alone.
    write_hosts(&lab, &BTreeMap::from([("worker_connections", "512")]));
    lab.provision(&[]).expect(0, "nginx changed");
    let after = started_at(&lab);
    for service in ["redis", "rails", "postgis"] {
        assert_eq!(
            after[service], before[service],
            "{service} was restarted by an nginx change"
        );
    }
    assert_ne!(after["nginx"], before["nginx"], "nginx was not restarted");
    let conf = nginx_conf(&lab);
    assert!(conf.contains("worker_connections 512"), "{conf}");
    visit(&lab);

    // 4. The PostGIS container removed by hand: a rerun brings it back with
    //    every row.
    let rows = rows_in_postgis(&lab);
    lab.ssh_ok(
        lab.addr(11),
        &format!("docker rm -f {}", lab.container("postgis")),
    );
    lab.provision(&[]).expect(0, "postgis removed");
    assert_eq!(rows_in_postgis(&lab), rows, "rows lost with the container");
    let page = visit(&lab);
    assert!(number_after(&page, "total") > rows);

    // 5. A third machine cannot reach host 2's PostgreSQL; host 1 can.
    lab.extra_machine(lab.spec("third", 12, Init::None));
    let db = lab.addr(11).to_string();
    assert!(
        lab.reaches(lab.addr(10), &db, 5432),
        "the app host must reach PostgreSQL"
    );
    assert!(
        !lab.reaches(lab.addr(12), &db, 5432),
        "a third machine reached PostgreSQL on host 2"
    );

    // 6. The same hosts reached as `ops`, a sudo user outside the docker
    //    group (the usual cloud login): a change is applied, a rerun changes
    //    nothing, and the probe's API calls went through the sudo relay.
    for host in [10, 11] {
        lab.ssh_ok(
            lab.addr(host),
            "id ops >/dev/null 2>&1 || { useradd -m -s /bin/sh ops && \
             install -d -m 700 -o ops -g ops /home/ops/.ssh && \
             install -m 600 -o ops -g ops /root/.ssh/authorized_keys /home/ops/.ssh/ && \
             echo 'ops ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/ops; }",
        );
    }
    write_hosts(&lab, &BTreeMap::from([("worker_connections", "256")]));
    let as_ops = std::fs::read_to_string(lab.path().join("hosts.toml"))
        .unwrap()
        .replace(
            "machine = \"local\"\n",
            "machine = \"local\"\nuser = \"ops\"\n",
        );
    assert_eq!(as_ops.matches("user = \"ops\"").count(), 2, "{as_ops}");
    lab.write("hosts.toml", &as_ops);
    lab.provision(&[])
        .expect(0, "nginx changed, as a sudo user");
    let conf = nginx_conf(&lab);
    assert!(conf.contains("worker_connections 256"), "{conf}");
    visit(&lab);
    let out = lab.provision(&[]).expect(0, "rerun as a sudo user");
    assert!(out.text().contains("Nothing changed"), "{}", out.text());
    eprintln!("no-op rerun as a sudo user: {:.3} s", out.secs());
    // sudo logs each command it runs to the journal of host 1 (systemd).
    let relayed = lab.ssh_ok(
        lab.addr(10),
        "journalctl -q --no-pager _COMM=sudo | grep -c 'COMMAND=.*docker.* system dial-stdio' || true",
    );
    assert!(
        relayed.trim().parse::<u32>().unwrap_or(0) >= 2,
        "the probe did not use the sudo relay: {relayed}"
    );
}

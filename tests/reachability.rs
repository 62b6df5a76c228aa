//! Nothing is reachable from outside a host that the user did not open,
//! over IPv4 and IPv6, across a reboot; data never lands in an anonymous
//! volume. End to end on local machines, with a hosts.toml unlike the
//! shipped one: the DB host comes first, PostGIS has no `volumes` line at
//! all, the DB host has a second network with IPv6, and it sends its logs
//! to the app host's Fluentd (a port used from another host there too).
//!
//! 1. machines first, then a second, IPv6-enabled network on `db` and on a
//!    third machine (before Docker starts on db, so docker-proxy would
//!    listen on `[::]` if the port were published on every address);
//! 2. a full run: the page through Nginx, rows in PostGIS;
//! 3. the third machine reaches the DB port neither over IPv4 (on any of
//!    db's addresses) nor over IPv6, nor app's Redis; the app host does
//!    reach the DB; Nginx (`public = true`) is open to it;
//! 4. a rule set that fails to apply leaves the old rules in force;
//! 5. PostGIS's data is in a named volume: a replaced container keeps
//!    every row;
//! 6. a reboot of db (systemd) restores the firewall before Docker
//!    publishes the port; a reboot of app (no init system) restores it
//!    when provision starts dockerd again, before anything is published.
//!
//! Traffic goes only to the machines this test creates (10.219.x.0/24 and
//! its own IPv6 ULA /64).

mod support;

use std::time::Duration;

use provision::machines::{Init, MachineSpec};
use support::http::http_until;
use support::lab::Lab;
use support::wait::wait_for;

fn hosts(lab: &Lab) -> String {
    format!(
        r#"[project]
name = "{project}"

[app]
source = "examples/rails_app"

[secrets.PG_PASSWORD]
generate = true

[secrets.SECRET_KEY_BASE]
generate = true

[hosts.db]
machine = "local"
address = "{db}"

[hosts.app]
machine = "local"
address = "{app}"
init = "none"

[services.postgis]
host = "db"
template = "postgis"
publish = ["5432"]
secrets = ["PG_PASSWORD"]
logs_to = "fluentd"

[services.elasticsearch]
host = "app"
template = "elasticsearch"
volumes = ["logs:/usr/share/elasticsearch/data"]

[services.fluentd]
host = "app"
template = "fluentd"
publish = ["24224"]
uses = ["elasticsearch"]

[services.redis]
host = "app"
template = "redis"
publish = ["6379"]
volumes = ["sessions:/data"]

[services.rails]
host = "app"
template = "rails"
uses = ["postgis", "redis"]
secrets = ["SECRET_KEY_BASE"]
env = {{ RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1" }}

[services.nginx]
host = "app"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
"#,
        project = lab.project,
        db = lab.addr(11),
        app = lab.addr(10),
    )
}

fn rows(lab: &Lab) -> u64 {
    let line = lab.ssh_ok(
        lab.addr(11),
        &format!(
            "docker exec -u postgres {} psql -d app -tAc 'SELECT count(*) FROM visits'",
            lab.container("postgis")
        ),
    );
    line.parse()
        .unwrap_or_else(|_| panic!("psql said {line:?}"))
}

fn fw_rules(lab: &Lab, host: u8) -> String {
    lab.ssh_ok(
        lab.addr(host),
        &format!(
            "iptables -w -S PV-{p}; iptables -w -S PVI-{p}; ip6tables -w -S PVI-{p} 2>&1 || true",
            p = lab.project
        ),
    )
}

#[test]
fn nothing_is_reachable_that_the_user_did_not_open() {
    let mut lab = Lab::new("pvreach", 219);
    lab.write("hosts.toml", &hosts(&lab));
    let pid = std::process::id();

    // 1. Machines, then the second network (IPv6) on db and a third machine.
    lab.provision(&["--machines-only"])
        .expect(0, "machines first");
    let mut third = MachineSpec::new(&lab.project, "third", lab.addr(12));
    third.init = Init::None;
    lab.extra_machine(third);
    let v6 = format!("fd00:219:{:x}::", pid % 0xffff);
    let side = format!("10.220.{}", 20 + pid % 200);
    let net = lab.network(
        "side",
        &[
            "--ipv6",
            "--subnet",
            &format!("{v6}/64"),
            "--subnet",
            &format!("{side}.0/24"),
        ],
    );
    for (machine, last) in [("db", 11), ("third", 12)] {
        lab.docker(&[
            "network",
            "connect",
            "--ip",
            &format!("{side}.{last}"),
            "--ip6",
            &format!("{v6}{last}"),
            &net,
            &lab.machine(machine),
        ]);
    }
    let db_v6 = format!("{v6}11");
    let db_side = format!("{side}.11");
    // sshd started before the second network: restarted, it listens there
    // too, which shows the IPv6 path works before anything is asserted on it.
    lab.ssh_ok(lab.addr(11), "systemctl restart ssh");
    wait_for(
        "db answers on its IPv6 address",
        Duration::from_secs(20),
        || lab.reaches(lab.addr(12), &db_v6, 22).then_some(()),
    );

    // 2. A full run; the page through Nginx; rows in PostGIS.
    let run = lab.provision(&[]).expect(0, "first run");
    eprintln!("cold run: {:.1} s", run.took.as_secs_f64());
    let plan = lab.provision(&["--dry-run"]).expect(0, "plan").stdout;
    assert!(
        plan.contains(&format!(
            "5432 (postgis) on {}: only app ({})",
            lab.addr(11),
            lab.addr(10)
        )),
        "{plan}"
    );
    assert!(
        plan.contains("6379 (redis) on 127.0.0.1: this host only"),
        "{plan}"
    );
    assert!(
        plan.contains("80 (nginx) on every address: anyone"),
        "{plan}"
    );
    assert!(
        plan.contains("volume postgis-data (for postgis's data at /var/lib/postgresql/data"),
        "{plan}"
    );
    let url = format!("http://{}/", lab.addr(10));
    http_until(&url, "Total visits", Duration::from_secs(60));
    http_until(&url, "Total visits", Duration::from_secs(60));
    let before = rows(&lab);
    assert!(before >= 2, "rows: {before}");

    // 3. Who reaches what.
    let (app, db, third) = (lab.addr(10), lab.addr(11).to_string(), lab.addr(12));
    assert!(
        lab.reaches(app, &db, 5432),
        "the app host must reach the DB"
    );
    assert!(
        !lab.reaches(third, &db, 5432),
        "third reached the DB on db's address"
    );
    assert!(
        !lab.reaches(third, &db_side, 5432),
        "third reached the DB on db's second address"
    );
    assert!(
        !lab.reaches(third, &db_v6, 5432),
        "third reached the DB over IPv6"
    );
    assert!(lab.reaches(third, &db_v6, 22), "the IPv6 path itself works");
    assert!(
        !lab.reaches(third, &app.to_string(), 6379),
        "third reached Redis"
    );
    assert!(lab.reaches(third, &app.to_string(), 80), "Nginx is public");
    // Listening sockets on 5432 (0x1538): only on db's own IPv4 address.
    let listening = lab.ssh_ok(
        lab.addr(11),
        "awk '$4 == \"0A\" && $2 ~ /:1538$/ {print FILENAME, $2}' /proc/net/tcp /proc/net/tcp6",
    );
    assert!(
        !listening.contains("tcp6") && !listening.contains("00000000:1538"),
        "5432 listens on every address: {listening}"
    );

    // 4. A rule set that fails to apply leaves the old rules in force.
    let live = fw_rules(&lab, 11);
    let dir = format!("/var/lib/provision/{}/firewall", lab.project);
    let broken = lab.ssh(
        lab.addr(11),
        &format!(
            "rm -rf /tmp/fw && cp -a {dir} /tmp/fw && \
             echo '-A PV-{p} -p tcp --dport 5432 -j NO-SUCH-TARGET' >> /tmp/fw/rules.v4 && \
             sh /tmp/fw/apply",
            p = lab.project
        ),
    );
    assert!(!broken.status.success(), "a broken rule set applied");
    assert_eq!(fw_rules(&lab, 11), live, "a failed apply changed the rules");
    assert!(
        !lab.reaches(third, &db, 5432),
        "a failed apply opened the DB"
    );
    assert!(lab.reaches(app, &db, 5432));

    // 5. PostGIS keeps its rows in a named volume across a replacement.
    lab.ssh_ok(
        lab.addr(11),
        &format!("docker rm -f {}", lab.container("postgis")),
    );
    lab.provision(&[]).expect(0, "postgis back");
    assert_eq!(rows(&lab), before, "rows lost with the container");
    // Its only volume is the named one (the other mounts are the files
    // provision binds read-only: pg_hba.conf, the password).
    let mounts = lab.ssh_ok(
        lab.addr(11),
        &format!(
            "docker inspect -f '{{{{range .Mounts}}}}{{{{if eq .Type \"volume\"}}}}{{{{.Name}}}}={{{{.Destination}}}} {{{{end}}}}{{{{end}}}}' {}",
            lab.container("postgis")
        ),
    );
    assert_eq!(mounts, "postgis-data=/var/lib/postgresql/data", "{mounts}");

    // 6a. A reboot of db (systemd): the rules are back before Docker
    //     publishes the port, without a provision run.
    lab.docker(&["restart", &lab.machine("db")]);
    wait_for("db is back with PostGIS", Duration::from_secs(120), || {
        let out = lab.ssh(
            lab.addr(11),
            &format!(
                "docker exec -u postgres {} pg_isready -q -h 127.0.0.1",
                lab.container("postgis")
            ),
        );
        out.status.success().then_some(())
    });
    assert_eq!(fw_rules(&lab, 11), live, "db's rules after a reboot");
    assert!(
        !lab.reaches(third, &db, 5432),
        "after a reboot third reached the DB"
    );
    assert!(
        !lab.reaches(third, &db_v6, 5432),
        "after a reboot third reached the DB over IPv6"
    );
    assert!(lab.reaches(app, &db, 5432));

    // 6b. A reboot of app (no init system): dockerd stays down until
    //     provision starts it, and the rules go in first.
    let app_rules = fw_rules(&lab, 10);
    lab.docker(&["restart", &lab.machine("app")]);
    wait_for("app answers ssh", Duration::from_secs(60), || {
        lab.ssh(lab.addr(10), "true").status.success().then_some(())
    });
    let run = lab.provision(&[]).expect(0, "run after app's reboot");
    let text = run.text();
    assert!(text.contains("install and start Docker"), "{text}");
    assert!(
        !text.contains("firewall:"),
        "the firewall was not restored before dockerd started:\n{text}"
    );
    assert_eq!(fw_rules(&lab, 10), app_rules, "app's rules after a reboot");
    http_until(&url, "Total visits", Duration::from_secs(60));
    assert!(rows(&lab) > before);
}

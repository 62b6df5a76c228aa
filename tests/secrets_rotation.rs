//! Secrets end to end on two local playground machines (issue 10, items 12
//! and 13), as a new user meets them: `web` (systemd) runs redis, rails and
//! nginx; `db` (no init system) runs PostGIS.
//!
//! 1. Provision, add rows through Nginx; `docker inspect` of the postgis
//!    container shows no password (it is a read-only file, 0600 on the
//!    host), and the server's environment holds none.
//! 2. A new PG_PASSWORD, as a second clone of the project makes it (its
//!    line gone from `.provision/secrets.env`, so a new one is generated),
//!    against the machines and volumes that were kept: the rerun says it
//!    rotates PG_PASSWORD and exits 0, the page is served, every row and the
//!    cluster itself (its system identifier) are kept.
//! 3. A rerun with nothing changed says nothing about a rotation.
//!
//! Every broken promise is collected and reported at the end, so one run
//! shows all of them. Own project name and a 10.222.x.0/24 subnet; the lab
//! removes its machines on drop. Traffic goes only to those machines.

mod support;

use support::lab::Lab;
use support::stack::{Db, Stack};

/// The value of NAME in the project's secrets file.
fn secret(lab: &Lab, name: &str) -> String {
    let text = std::fs::read_to_string(lab.state().join("secrets.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in secrets.env"))
        .to_string()
}

#[test]
fn a_new_pg_password_is_rotated_with_every_row_kept_and_never_shown_by_docker_inspect() {
    let lab = Lab::new("pvsecret", 222);
    let stack = Stack {
        db_as: Db::MachineNoInit,
        ..lab.stack()
    };
    stack.write(&lab);
    let mut broken: Vec<String> = Vec::new();
    let postgis = lab.container("postgis");

    // 1. Provision, rows through Nginx.
    let first = lab.provision(&[]).expect(0, "first run");
    eprintln!("first run: {:.1} s", first.took.as_secs_f64());
    for _ in 0..3 {
        lab.visit(stack.web);
    }
    let rows = lab.psql(stack.db, "SELECT count(*) FROM visits");
    assert!(rows.parse::<u64>().unwrap() >= 3, "rows: {rows}");
    let identifier = lab.psql(
        stack.db,
        "SELECT system_identifier FROM pg_control_system()",
    );
    let old = secret(&lab, "PG_PASSWORD");

    // The password is a file, not the container's environment.
    let inspect = lab.ssh_ok(lab.addr(11), &format!("docker inspect {postgis}"));
    if inspect.contains(&old) {
        broken.push("docker inspect of postgis shows PG_PASSWORD".into());
    }
    let environ = lab.ssh_ok(
        lab.addr(11),
        &format!("docker exec -u postgres {postgis} cat /proc/1/environ | tr '\\0' '\\n'"),
    );
    if environ.contains(&old) {
        broken.push("the PostgreSQL server's environment holds PG_PASSWORD".into());
    }
    let file = format!(
        "/var/lib/provision/{}/secrets/postgis/PG_PASSWORD",
        lab.project
    );
    let mode = lab.ssh(lab.addr(11), &format!("stat -c '%a %U' {file}"));
    let mode = String::from_utf8_lossy(&mode.stdout).trim().to_string();
    if mode != "600 root" {
        broken.push(format!("the password file on db is {mode:?}, not 600 root"));
    }
    let mounted = lab.ssh(
        lab.addr(11),
        &format!(
            "docker inspect -f '{{{{range .Mounts}}}}{{{{.Destination}}}} {{{{.RW}}}};{{{{end}}}}' {postgis}"
        ),
    );
    if !String::from_utf8_lossy(&mounted.stdout).contains("/run/secrets/PG_PASSWORD false") {
        broken.push("PG_PASSWORD is not mounted read-only at /run/secrets/PG_PASSWORD".into());
    }

    // 2. A new generated password, as a second clone of the project has.
    let path = lab.state().join("secrets.env");
    let kept: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("PG_PASSWORD="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, kept).unwrap();
    let rotation = lab.provision(&[]);
    eprintln!(
        "rotation run: {:?} in {:.1} s\n{}",
        rotation.code,
        rotation.took.as_secs_f64(),
        rotation.stdout
    );
    let new = secret(&lab, "PG_PASSWORD");
    assert_ne!(new, old, "a new PG_PASSWORD was generated");
    let text = rotation.text();
    if rotation.code != Some(0) {
        broken.push(format!(
            "the run after the new PG_PASSWORD exited {:?}:\n{text}",
            rotation.code
        ));
    } else {
        if !rotation.stdout.contains("rotates PG_PASSWORD") {
            broken.push(format!(
                "the run does not say it rotates PG_PASSWORD:\n{text}"
            ));
        }
        if text.contains(&new) || text.contains(&old) {
            broken.push("the run printed a password".into());
        }
        // Rails logs in with the new password: the page is served and counts on.
        let before = lab.psql(stack.db, "SELECT count(*) FROM visits");
        if before != rows {
            broken.push(format!("rows before the next visit: {before}, were {rows}"));
        }
        let total = lab.visit(stack.web);
        if total != rows.parse::<u64>().unwrap() + 1 {
            broken.push(format!(
                "total visits after the rotation: {total}, rows were {rows}"
            ));
        }
        let now = lab.psql(
            stack.db,
            "SELECT system_identifier FROM pg_control_system()",
        );
        if now != identifier {
            broken.push(format!("the cluster was re-created: {identifier} -> {now}"));
        }
        let inspect = lab.ssh_ok(lab.addr(11), &format!("docker inspect {postgis}"));
        if inspect.contains(&new) {
            broken.push("docker inspect of postgis shows the new PG_PASSWORD".into());
        }

        // 3. Nothing changed: no rotation claimed.
        let again = lab.provision(&[]).expect(0, "rerun");
        if again.stdout.contains("rotates") || !again.stdout.contains("Nothing changed") {
            broken.push(format!("a rerun with nothing changed:\n{}", again.text()));
        }
    }
    assert!(broken.is_empty(), "broken:\n- {}", broken.join("\n- "));
}

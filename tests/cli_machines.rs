//! Issue 4's path through the command line: `--machines-only` leaves two
//! machines reachable over SSH at their own addresses with strict host-key
//! checking; `down` removes them; running again re-creates them.
//! Traffic goes only to the machines this test creates (10.217.x.0/24).

mod support;

use support::lab::Lab;

#[test]
fn machines_only_then_down_then_up_again() {
    let lab = Lab::new("pvcli", 217);
    let toml = format!(
        "[project]\nname = \"{project}\"\n\n\
         [hosts.web]\nmachine = \"local\"\naddress = \"{web}\"\n\n\
         [hosts.db]\nmachine = \"local\"\ninit = \"none\"\naddress = \"{db}\"\n\n\
         [services.redis]\nhost = \"web\"\ntemplate = \"redis\"\n",
        project = lab.project,
        web = lab.addr(10),
        db = lab.addr(11),
    );
    lab.write("hosts.toml", &toml);

    for round in 0..2 {
        lab.provision(&["--machines-only"])
            .expect(0, &format!("round {round}"));
        for (name, last) in [("web", 10), ("db", 11)] {
            let out = lab.ssh(lab.addr(last), "hostname");
            assert!(
                out.status.success(),
                "round {round}: ssh {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
        }
        let status = lab.provision(&["status"]);
        let text = &status.stdout;
        assert!(
            text.contains("machine web") && text.contains("Running"),
            "{text}"
        );

        lab.provision(&["down"]).expect(0, "down");
        assert_eq!(
            lab.containers(),
            Vec::<String>::new(),
            "down left containers"
        );
        assert!(
            !lab.ssh(lab.addr(10), "hostname").status.success(),
            "a removed machine still answers"
        );
    }
}

//! `status`: each machine and each service. Read-only: it connects
//! without taking the hosts' locks.

use crate::inventory::Inventory;
use crate::run;
use crate::session;
use crate::transport::Exec;

use super::{EXIT_FAILED, EXIT_OK};

pub(super) async fn status(inv: &Inventory) -> i32 {
    let specs = run::machine_specs(inv);
    if !specs.is_empty() {
        if let Ok(p) = run::playground(inv) {
            match p.status(&specs).await {
                Ok(list) => {
                    for m in list {
                        println!("machine {:<10} {:<15} {:?}", m.name, m.address, m.state);
                    }
                }
                Err(e) => eprintln!("machines: {e}"),
            }
        }
    }
    let line = crate::commands::shell(&crate::commands::argv([
        "docker".to_string(),
        "ps".into(),
        "-a".into(),
        "--filter".into(),
        format!(
            "label={}={}",
            crate::commands::PROJECT_LABEL,
            inv.project.name
        ),
        "--format".into(),
        "{{.Names}}\t{{.Status}}".into(),
    ]));
    let mut code = EXIT_OK;
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    let opened = session::connect(inv, &names).await;
    for (h, o) in inv.hosts.iter().zip(opened) {
        let out = match o.transport {
            Ok(t) => t
                .exec(
                    Exec::new(line.clone())
                        .timeout(std::time::Duration::from_secs(60))
                        .idempotent(true),
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match out {
            Ok(o) if o.success() => {
                println!("host {} ({}):", h.name, h.address);
                for l in o.stdout_str().lines() {
                    println!("  {l}");
                }
            }
            Ok(o) => println!(
                "host {} ({}): docker: {}",
                h.name,
                h.address,
                o.stderr_str().trim()
            ),
            Err(e) => {
                println!("host {} ({}): unreachable: {e}", h.name, h.address);
                code = EXIT_FAILED;
            }
        }
    }
    code
}

//! `down`: remove the local playground machines.

use crate::inventory::Inventory;
use crate::run;

use super::{EXIT_FAILED, EXIT_OK};

pub(super) async fn down(inv: &Inventory, volumes: bool) -> i32 {
    let specs = run::machine_specs(inv);
    if specs.is_empty() {
        eprintln!(
            "provision: no local machines in {}: nothing to remove",
            inv.file.display()
        );
        return EXIT_OK;
    }
    let p = match run::playground(inv) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    match p.down(&specs, volumes).await {
        Ok(()) => {
            for s in &specs {
                let extra = if volumes { " and its volumes" } else { "" };
                println!("removed machine {} ({}){extra}", s.name, s.address);
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

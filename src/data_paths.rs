//! Where services keep their data. A template declares its data paths (the
//! image's `VOLUME`s). Each must be covered by a named volume or a data
//! container: otherwise Docker puts the data in an anonymous volume that no
//! backup sees and that a replacement container never finds again. A mount
//! above or below a data path hides it the same way, so that is an input
//! error. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostics::Diagnostic;
use crate::inventory::{Inventory, VolumeMount};
use crate::templates::Template;

/// A named volume provision adds for a data path hosts.toml leaves unmounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImpliedVolume {
    pub service: String,
    pub mount: VolumeMount,
}

/// Check every service's mounts against its template's data paths; the
/// volumes to add for the paths nothing covers.
pub fn check(
    inv: &Inventory,
    templates: &BTreeMap<String, Template>,
) -> Result<Vec<ImpliedVolume>, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let mut implied = Vec::new();
    for s in &inv.services {
        let Some(t) = templates.get(&s.name) else {
            continue;
        };
        let base = format!("services.{}", s.name);
        // Mounts that may cover a data path: named volumes, then the paths
        // of the data containers the service mounts.
        let mut mounts: Vec<(String, String)> = s
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{base}.volumes[{i}]"), v.path.clone()))
            .collect();
        for d in inv.data.iter().filter(|d| s.volumes_from.contains(&d.name)) {
            for p in &d.paths {
                mounts.push((format!("{base}.volumes_from"), p.clone()));
            }
        }
        let mut uncovered = Vec::new();
        for data in &t.manifest.data {
            let data = normalize(data);
            let mut covered = false;
            for (key, mount) in &mounts {
                let mount = normalize(mount);
                if mount == data {
                    covered = true;
                } else if let Some(how) = hides(mount, data) {
                    problems.push(inv.diagnostic(
                        key,
                        format!(
                            "`{mount}` is {how} `{data}`, where template `{}` keeps its data: \
                             the data would land in an anonymous volume that backups miss and \
                             a new container does not get back",
                            t.name
                        ),
                        Some(format!("mount the volume at `{data}` itself")),
                    ));
                    covered = true; // reported once, as this error
                }
            }
            if !covered {
                uncovered.push(data.to_string());
            }
        }
        let taken: BTreeSet<&str> = inv
            .services_on(&s.host)
            .flat_map(|o| o.volumes.iter().map(|v| v.volume.as_str()))
            .collect();
        for (i, path) in uncovered.into_iter().enumerate() {
            let mut name = if i == 0 {
                format!("{}-data", s.name)
            } else {
                format!("{}-data-{}", s.name, i + 1)
            };
            while taken.contains(name.as_str()) {
                name.push_str("-auto");
            }
            implied.push(ImpliedVolume {
                service: s.name.clone(),
                mount: VolumeMount {
                    volume: name,
                    path,
                    read_only: false,
                    implied: true,
                },
            });
        }
    }
    if problems.is_empty() {
        Ok(implied)
    } else {
        Err(problems)
    }
}

fn normalize(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// How `mount` hides `data` (a parent or a child of it), if it does.
fn hides(mount: &str, data: &str) -> Option<&'static str> {
    let under = |child: &str, parent: &str| {
        parent == "/"
            || child
                .strip_prefix(parent)
                .is_some_and(|r| r.starts_with('/'))
    };
    if under(data, mount) {
        Some("a parent of")
    } else if under(mount, data) {
        Some("inside")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_children_hide_siblings_do_not() {
        assert_eq!(
            hides("/var/lib/postgresql", "/var/lib/postgresql/data"),
            Some("a parent of")
        );
        assert_eq!(
            hides("/var/lib/postgresql/data/base", "/var/lib/postgresql/data"),
            Some("inside")
        );
        assert_eq!(hides("/", "/data"), Some("a parent of"));
        assert_eq!(hides("/data2", "/data"), None);
        assert_eq!(
            hides("/var/lib/postgresql/database", "/var/lib/postgresql/data"),
            None
        );
        assert_eq!(normalize("/data/"), "/data");
    }
}

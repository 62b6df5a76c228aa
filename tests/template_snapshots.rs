//! Every rendered template of the shipped playground, as snapshots: a
//! change to a template shows up as a reviewed diff.

use std::path::{Path, PathBuf};

use provision::plan::{Action, StepKind};
use provision::secrets::Generate;

fn env(name: &str) -> Option<String> {
    match name {
        "PG_PASSWORD" => Some("snapshot-pg-password".into()),
        "SECRET_KEY_BASE" => Some("snapshot-secret-key-base".into()),
        _ => None,
    }
}

#[test]
fn every_rendered_template_file() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo.join("hosts.toml"), dir.path().join("hosts.toml")).unwrap();
    std::os::unix::fs::symlink(repo.join("examples"), dir.path().join("examples")).unwrap();
    let loaded =
        provision::load::load(&dir.path().join("hosts.toml"), &env, Generate::Placeholder).unwrap();
    let plan = provision::cli::build_plan(&loaded).unwrap();
    let mut seen = 0;
    for step in plan
        .hosts
        .iter()
        .flat_map(|h| &h.steps)
        .filter(|s| s.kind() == StepKind::Build || s.kind() == StepKind::Config)
    {
        let service = step.service().unwrap();
        // Live files (pg_hba.conf) are uploaded by their own step.
        let Action::Upload { files, .. } = &step.actions[0] else {
            panic!("builds and live files start with an upload")
        };
        for f in files.iter().filter(|f| !f.path.starts_with("app/")) {
            let name = format!("{service}__{}", f.path.replace(['/', '.'], "_"));
            let text = String::from_utf8(f.data.clone()).unwrap();
            assert!(
                !text.contains("snapshot-pg-password"),
                "a secret was rendered into {name}"
            );
            insta::with_settings!({ snapshot_path => Path::new("snapshots/templates"), prepend_module_to_snapshot => false }, {
                insta::assert_snapshot!(name, text);
            });
            seen += 1;
        }
    }
    assert!(seen >= 14, "expected every template's files, saw {seen}");
}

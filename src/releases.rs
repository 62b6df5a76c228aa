//! Releases of a start-first service (Rails): the container that serves
//! always has the service's container name; a new release starts beside
//! it as NAME-next and takes that name once it is ready; the releases
//! before it are kept, stopped, as NAME-SPEC (the last [`KEPT`] in all,
//! the serving one included), so `rollback` starts one again without a
//! rebuild. Command builders and the parsing of their answers only.

use crate::commands::{argv, quote, shell, PROJECT_LABEL, SERVICE_LABEL, SPEC_LABEL};

/// Releases kept on the host, the serving one included.
pub const KEPT: usize = 3;

/// The name a new release starts under, beside the serving container.
pub fn next_name(container: &str) -> String {
    format!("{container}-next")
}

/// The name a release is kept under once another one serves.
pub fn kept_name(container: &str, spec: &str) -> String {
    format!("{container}-{spec}")
}

/// Who must look the service up afresh at a switch: a container and the
/// signal that makes it do so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reresolve {
    pub container: String,
    pub signal: String,
}

/// What a switch needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch<'a> {
    pub project: &'a str,
    pub service: &'a str,
    /// The serving container's name (the service's).
    pub container: &'a str,
    /// The ready release that takes over.
    pub candidate: &'a str,
    /// Where it listens: the old release stops once no connection to it
    /// is open.
    pub port: Option<u16>,
    pub reresolve: &'a [Reresolve],
}

/// One shell line, run once `candidate` is ready: it takes the service's
/// name (the old release keeps running under its kept name), the services
/// that use it look it up afresh (Nginx: a reload, whose old workers
/// finish their requests), the old release stops once its in-flight
/// requests are done (a graceful `docker stop`), and releases beyond
/// [`KEPT`] are removed.
///
/// The first signal comes before the renames: each consumer then holds a
/// fresh lookup for its whole cache time, so none looks the name up in
/// the instant between the two renames, when it resolves to nothing.
pub fn switch(s: &Switch) -> String {
    let signal = s
        .reresolve
        .iter()
        .map(|r| {
            format!(
                "docker kill --signal {} {} >/dev/null 2>&1 || true; ",
                quote(&r.signal),
                quote(&r.container)
            )
        })
        .collect::<String>();
    let settle = if s.reresolve.is_empty() {
        ""
    } else {
        "sleep 0.5; "
    };
    // Open inbound connections to the port (state 01, ESTABLISHED), from
    // the old release's own /proc: no tool needed in its image.
    let drain = match s.port {
        Some(port) => format!(
            "i=0; while [ $i -lt 300 ] && docker exec \"$old\" cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
             | awk '$2 ~ /:{port:04X}$/ && $4 == \"01\" {{ n++ }} END {{ exit !n }}'; do sleep 0.1; i=$((i+1)); done; "
        ),
        None => String::new(),
    };
    let spec_of = format!(
        "docker inspect --format {} \"$cur\"",
        quote(&format!("{{{{index .Config.Labels \"{SPEC_LABEL}\"}}}}"))
    );
    let prune = format!(
        "docker ps --all --filter {} --filter {} --format {} | sort -r | cut -f2 \
         | grep -v -x -e \"$cur\" | tail -n +{KEPT} | xargs -r docker rm --force >/dev/null",
        quote(&format!("label={PROJECT_LABEL}={}", s.project)),
        quote(&format!("label={SERVICE_LABEL}={}", s.service)),
        quote("{{.CreatedAt}}\t{{.Names}}"),
    );
    format!(
        "cur={cur}; new={new}; old=; \
         if docker inspect --type container \"$cur\" >/dev/null 2>&1; then \
         old=\"$cur-$({spec_of})\"; [ \"$old\" != \"$cur-\" ] || old=\"$cur-old\"; fi; \
         {signal}{settle}\
         if [ -n \"$old\" ]; then docker rm --force \"$old\" >/dev/null 2>&1 || true; docker rename \"$cur\" \"$old\" || exit 1; fi; \
         docker rename \"$new\" \"$cur\" || {{ [ -z \"$old\" ] || docker rename \"$old\" \"$cur\"; exit 1; }}; \
         {signal}\
         if [ -n \"$old\" ]; then {drain}docker stop --time 30 \"$old\" >/dev/null; fi; \
         {prune}",
        cur = quote(s.container),
        new = quote(s.candidate),
    )
}

/// Every release of a service on its host, one per line:
/// `NAME<TAB>SPEC<TAB>STATE<TAB>STARTED<TAB>IMAGE`.
pub fn list(project: &str, service: &str) -> String {
    format!(
        "docker ps --all --quiet --filter {} --filter {} | xargs -r docker inspect --format {}",
        quote(&format!("label={PROJECT_LABEL}={project}")),
        quote(&format!("label={SERVICE_LABEL}={service}")),
        quote(&format!(
            "{{{{.Name}}}}\t{{{{index .Config.Labels \"{SPEC_LABEL}\"}}}}\t{{{{.State.Status}}}}\t{{{{.State.StartedAt}}}}\t{{{{.Config.Image}}}}"
        )),
    )
}

/// One release as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub name: String,
    pub spec: String,
    pub state: String,
    /// When it last started (RFC 3339, as Docker says): when it was
    /// deployed, or rolled back to.
    pub started: String,
    pub image: String,
}

impl Release {
    /// The image's content hash (its tag).
    pub fn content(&self) -> &str {
        self.image.rsplit_once(':').map(|(_, t)| t).unwrap_or("")
    }
}

/// The answer of [`list`]: the serving release first, then the kept ones,
/// latest start first. A leftover NAME-next (a release that never got
/// ready) is not a release.
pub fn parse(text: &str, container: &str) -> Vec<Release> {
    let mut out: Vec<Release> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?.trim_start_matches('/').to_string();
            let r = Release {
                name,
                spec: f.next()?.to_string(),
                state: f.next()?.to_string(),
                started: f.next()?.to_string(),
                image: f.next()?.trim().to_string(),
            };
            (r.name == container || r.name.starts_with(&format!("{container}-")))
                .then_some(r)
                .filter(|r| r.name != next_name(container))
        })
        .collect();
    out.sort_by(|a, b| {
        (b.name == container)
            .cmp(&(a.name == container))
            .then_with(|| b.started.cmp(&a.started))
    });
    out
}

/// `docker start` of a kept release, for a rollback.
pub fn start(name: &str) -> String {
    shell(&argv(["docker", "start", name]))
}

/// `docker stop` of a release that did not get ready again.
pub fn stop(name: &str) -> String {
    shell(&argv(["docker", "stop", "--time", "30", name]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_listed_serving_first_then_latest_start_first() {
        let text = "/p-rails\taaaa\trunning\t2026-12-02T10:00:00Z\tp-rails:111\n\
                    /p-rails-bbbb\tbbbb\texited\t2026-12-01T10:00:00Z\tp-rails:222\n\
                    /p-rails-next\tcccc\texited\t2026-12-02T11:00:00Z\tp-rails:333\n\
                    /p-rails-dddd\tdddd\texited\t2026-12-01T12:00:00Z\tp-rails:444\n\
                    /p-railsx\teeee\trunning\t2026-12-01T12:00:00Z\tp-railsx:5\n";
        let r = parse(text, "p-rails");
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["p-rails", "p-rails-dddd", "p-rails-bbbb"]);
        assert_eq!(r[1].content(), "444");
        assert_eq!(r[0].state, "running");
    }

    #[test]
    fn a_switch_reloads_before_and_after_the_renames_and_drains_the_port() {
        let re = [Reresolve {
            container: "p-nginx".into(),
            signal: "HUP".into(),
        }];
        let line = switch(&Switch {
            project: "p",
            service: "rails",
            container: "p-rails",
            candidate: "p-rails-next",
            port: Some(3000),
            reresolve: &re,
        });
        let hup = "docker kill --signal HUP p-nginx >/dev/null 2>&1 || true; ";
        let first = line.find(hup).unwrap();
        let renames = line.find("docker rename \"$cur\" \"$old\"").unwrap();
        let second = line.rfind(hup).unwrap();
        assert!(first < renames && renames < second, "{line}");
        assert!(line.contains("/:0BB8$/"), "port 3000 in hex: {line}");
        assert!(line.contains("tail -n +3"), "{line}");
        assert!(
            line.starts_with("cur=p-rails; new=p-rails-next; "),
            "{line}"
        );
    }

    #[test]
    fn without_consumers_or_port_a_switch_neither_signals_nor_drains() {
        let line = switch(&Switch {
            project: "p",
            service: "api",
            container: "p-api",
            candidate: "p-api-next",
            port: None,
            reresolve: &[],
        });
        assert!(!line.contains("docker kill"), "{line}");
        assert!(!line.contains("sleep 0.5"), "{line}");
        assert!(!line.contains("/proc/net/tcp"), "{line}");
    }
}

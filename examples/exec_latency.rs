//! Per-command latency on one connection to a host of an inventory:
//! `cargo run --release --example exec_latency -- hosts.toml HOST [N]`.

use std::time::Instant;

use provision::transport::{Exec, SshTransport, Transport};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let inv = provision::inventory::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap();
    let host = inv.host(&args[2]).expect("host");
    let n: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(20);
    let started = Instant::now();
    let t = SshTransport::connect(provision::run::ssh_target(&inv, host))
        .await
        .unwrap();
    println!(
        "connect: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let mut times = Vec::new();
    for _ in 0..n {
        let s = Instant::now();
        let out = t
            .exec(Exec::new("true").timeout(std::time::Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(out.success());
        times.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "exec `true` x{n}: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times[n / 2],
        times[0],
        times[n - 1]
    );
}

//! A two-machine playground (one systemd, one no-init) driven from the command
//! line, for trying the machines module by hand and for bench/machines.sh:
//!
//! cargo run --release --example playground -- up --project demo --subnet 10.213.250
//! cargo run --release --example playground -- down --volumes --project demo --subnet 10.213.250

use std::time::Instant;

use clap::{Parser, ValueEnum};
use provision::machines::{Init, MachineSpec, Playground, DEFAULT_BASE_IMAGE};

#[derive(Parser)]
struct Args {
    action: Action,
    /// Project name: prefix of the containers, volumes and network.
    #[arg(long, default_value = "playground")]
    project: String,
    /// First three octets of the machines' /24 (web gets .10, db gets .11).
    #[arg(long, default_value = "10.213.250")]
    subnet: String,
    /// State folder (key and known_hosts).
    #[arg(long, default_value = ".provision")]
    state: String,
    /// Base image tag the machine images are built from.
    #[arg(long, default_value = DEFAULT_BASE_IMAGE)]
    base_image: String,
    /// With `down`: remove the machines' /var/lib/docker volumes too.
    #[arg(long)]
    volumes: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Action {
    Up,
    Down,
    Status,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let web = MachineSpec::new(
        &args.project,
        "web",
        format!("{}.10", args.subnet).parse().expect("subnet"),
    );
    let mut db = MachineSpec::new(
        &args.project,
        "db",
        format!("{}.11", args.subnet).parse().expect("subnet"),
    );
    db.init = Init::None;
    let specs = [web, db];
    let playground = Playground::new(&args.state).with_base_image(&args.base_image);
    let started = Instant::now();
    let result = match args.action {
        Action::Up => playground.up(&specs).await.map(|infos| {
            for m in infos {
                println!(
                    "{} {} {}:{} {:?}",
                    m.name, m.container, m.address, m.ssh_port, m.action
                );
            }
        }),
        Action::Down => playground.down(&specs, args.volumes).await,
        Action::Status => playground.status(&specs).await.map(|all| {
            for m in all {
                println!("{} {} {} {:?}", m.name, m.container, m.address, m.state);
            }
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    eprintln!("elapsed: {:.1}s", started.elapsed().as_secs_f64());
}

//! Helper for bench/ssh.sh: one provision SSH operation per run.
//!
//! ```text
//! ssh_bench PORT KEY KNOWN_HOSTS USER connect          # connect + auth + `true`
//! ssh_bench PORT KEY KNOWN_HOSTS USER seq N            # prints ms for N sequential `true`
//! ssh_bench PORT KEY KNOWN_HOSTS USER cat FILE DEST    # connect + FILE into `cat > DEST`
//! ssh_bench PORT KEY KNOWN_HOSTS USER tar FILE DESTDIR # connect + tar of FILE via upload_tar
//! ```
//! Always 127.0.0.1.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use provision::transport::{Exec, SshTarget, SshTransport, Transport};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: ssh_bench PORT KEY KNOWN_HOSTS USER connect|seq N|cat FILE DEST|tar FILE DIR"
        );
        std::process::exit(2);
    }
    let mut t = SshTarget::new("bench", "127.0.0.1");
    t.port = args[1].parse().expect("port");
    t.user = args[4].clone();
    t.identity = Some(PathBuf::from(&args[2]));
    t.known_hosts = vec![PathBuf::from(&args[3])];
    t.ssh_dir = Some(PathBuf::from("/nonexistent"));
    t.connect_timeout = Duration::from_secs(10);
    let ssh = SshTransport::connect(t).await.unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let ok = |r: Result<provision::transport::ExecOutput, _>| {
        let out = r.unwrap_or_else(|e: provision::transport::TransportError| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        assert!(out.success(), "{out:?}");
    };
    let args = &args[1..]; // shift past USER: the mode is args[4]
    match args[4].as_str() {
        "connect" => ok(ssh.exec(Exec::new("true")).await),
        "seq" => {
            let n: usize = args[5].parse().expect("N");
            let start = Instant::now();
            for _ in 0..n {
                ok(ssh.exec(Exec::new("true")).await);
            }
            println!("{:.3}", start.elapsed().as_secs_f64() * 1000.0);
        }
        "cat" => {
            let f = tokio::fs::File::open(&args[5]).await.expect("file");
            let line = format!("cat > {}", shell_words::quote(&args[6]));
            ok(ssh.exec(Exec::new(line).stdin_reader(Box::new(f))).await);
        }
        "tar" => {
            let path = PathBuf::from(&args[5]);
            let (rd, wr) = tokio::io::duplex(1 << 20);
            // Build the tar on a blocking thread, streamed through a pipe.
            let build = tokio::task::spawn_blocking(move || {
                let w = tokio_util_bridge(wr);
                let mut b = tar::Builder::new(w);
                b.append_path_with_name(&path, "blob").expect("tar");
                b.into_inner().expect("tar").flush_all();
            });
            ssh.upload_tar(&args[6], Box::new(rd))
                .await
                .unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(1)
                });
            build.await.unwrap();
        }
        other => panic!("unknown mode {other}"),
    }
    ssh.close().await;
}

/// A blocking `Write` over a tokio duplex half (for the tar builder).
struct BlockingWriter {
    inner: tokio::io::DuplexStream,
    rt: tokio::runtime::Handle,
}

fn tokio_util_bridge(inner: tokio::io::DuplexStream) -> BlockingWriter {
    BlockingWriter {
        inner,
        rt: tokio::runtime::Handle::current(),
    }
}

impl BlockingWriter {
    fn flush_all(mut self) {
        use tokio::io::AsyncWriteExt;
        self.rt.block_on(self.inner.shutdown()).expect("shutdown");
    }
}

impl std::io::Write for BlockingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncWriteExt;
        self.rt.block_on(self.inner.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

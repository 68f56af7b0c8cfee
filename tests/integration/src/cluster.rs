//! Clusters of a test's own (a standby, a subscriber, a preloaded server with workers), run as
//! postgres on a Unix socket in a scratch directory, stopped and removed when dropped.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;

/// The PostgreSQL programs of the cluster under test (scripts/test.sh runs 15, then 18).
pub fn pg_bin() -> String {
    std::env::var("CUSTOS_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
}

/// A new empty directory owned by postgres.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/custos-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("chown")
        .args(["postgres:", dir.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    dir
}

/// A cluster of the test's own, run as postgres on a Unix socket in `dir`.
pub struct Cluster {
    pub dir: PathBuf,
}

impl Cluster {
    pub fn pg_ctl(&self, args: &[&str]) -> bool {
        Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{}/pg_ctl", pg_bin()),
                "-D",
            ])
            .arg(self.dir.join("data"))
            .args(["-l"])
            .arg(self.dir.join("server.log"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    pub fn connect(&self, db: &str) -> Client {
        Client::connect(
            &format!(
                "host={} port=5432 dbname={db} user=postgres",
                self.dir.display()
            ),
            NoTls,
        )
        .unwrap_or_else(|e| panic!("connect to {db} at {}: {e}", self.dir.display()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn configure(&self, lines: &str) {
        let conf = self.dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(lines);
        std::fs::write(&conf, text).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new cluster, preloading custos, started; `extra` is appended to its postgresql.conf.
pub fn new_cluster_with(name: &str, extra: &str) -> Cluster {
    let cluster = Cluster { dir: scratch(name) };
    let ok = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{}/initdb", pg_bin()),
            "-D",
        ])
        .arg(cluster.dir.join("data"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "initdb");
    cluster.configure(&format!(
        "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nport = 5432\nshared_preload_libraries = 'custos'\n{extra}\n",
        cluster.dir.display()
    ));
    assert!(cluster.pg_ctl(&["-w", "start"]), "{}", cluster.log());
    cluster
}

/// A new cluster, preloading custos, started.
pub fn new_cluster(name: &str) -> Cluster {
    new_cluster_with(name, "")
}

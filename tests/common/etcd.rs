//! [`Etcd`]: an `etcd` for one test, inside one of the test's namespaces,
//! with a throw-away data directory; killed by its pid on drop (also when
//! the test panics), its directory removed with it.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::netns::Netns;
use super::process::{poll, TempDir};

/// etcd serving clients on `http://ADDR:2379` in a test namespace.
pub struct Etcd {
    child: Child,
    dir: TempDir,
    /// The client URL of each listen address, in order.
    pub urls: Vec<String>,
}

impl Etcd {
    /// Starts etcd in `ns`, serving clients on port 2379 of each of
    /// `addrs` (addresses of the namespace's own links), and waits until
    /// it answers there.
    pub fn start_in(ns: &Netns, addrs: &[&str]) -> Etcd {
        let dir = TempDir::new("etcd");
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}:2379")).collect();
        let peer = format!("http://{}:2380", addrs[0]);
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let data = dir.path().join("data");
        let child = ns
            .command(
                "etcd",
                &[
                    "--name",
                    "t",
                    "--data-dir",
                    &data.display().to_string(),
                    "--listen-client-urls",
                    &urls.join(","),
                    "--advertise-client-urls",
                    &urls.join(","),
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &format!("t={peer}"),
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ],
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let etcd = Etcd { child, dir, urls };
        // etcd answers its health endpoint once it has a leader.
        let healthy = poll(Duration::from_secs(30), Duration::from_millis(200), || {
            let o = ns.exec("busybox", &["wget", "-q", "-O", "-", &format!("{}/health", etcd.urls[0])]);
            String::from_utf8_lossy(&o.stdout).contains("true").then_some(())
        });
        assert!(healthy.is_some(), "etcd did not become healthy at {}:\n{}", etcd.urls[0], etcd.log());
        etcd
    }

    /// etcd's pid (`ip netns exec` execs etcd), to pause it with SIGSTOP.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // `ip netns exec` execs etcd: this pid is etcd's.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- etcd log ---\n{}--- end of etcd log ---", self.log());
        }
    }
}

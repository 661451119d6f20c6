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
    /// The command that runs it (in its namespace), to start it again.
    args: Vec<String>,
    ns: String,
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
        let data = dir.path().join("data");
        let args: Vec<String> = [
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
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let child = spawn(ns, &args, &dir);
        let etcd = Etcd { child, dir, args, ns: ns.name().to_string(), urls };
        etcd.wait_healthy(ns);
        etcd
    }

    /// etcd's pid (`ip netns exec` execs etcd), to pause it with SIGSTOP.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills etcd (its data stays, for [`Etcd::start_again`]).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same data, in `ns` (the namespace it ran
    /// in), and waits until it answers.
    pub fn start_again(&mut self, ns: &Netns) {
        assert_eq!(ns.name(), self.ns, "etcd starts again where it ran");
        self.kill();
        self.child = spawn(ns, &self.args, &self.dir);
        self.wait_healthy(ns);
    }

    fn wait_healthy(&self, ns: &Netns) {
        // etcd answers its health endpoint once it has a leader.
        let healthy = poll(Duration::from_secs(30), Duration::from_millis(200), || {
            let o = ns.exec("busybox", &["wget", "-q", "-O", "-", &format!("{}/health", self.urls[0])]);
            String::from_utf8_lossy(&o.stdout).contains("true").then_some(())
        });
        assert!(healthy.is_some(), "etcd did not become healthy at {}:\n{}", self.urls[0], self.log());
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

/// Runs etcd with `args` in `ns`, appending to its log in `dir`.
fn spawn(ns: &Netns, args: &[String], dir: &TempDir) -> Child {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("etcd.log")).expect("etcd log");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.command("etcd", &args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("starting etcd")
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

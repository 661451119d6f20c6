//! [`Capture`]: `tcpdump` in a test namespace, writing what it decodes
//! (`-v`: inner frames of VXLAN too) to a file; stopped by its pid on
//! [`Capture::stop`] or drop.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::netns::Netns;
use super::process::{poll, signal, wait_timeout};

/// A running packet capture.
pub struct Capture {
    child: Option<Child>,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFACE -n -v FILTER` in `ns` and waits until it
    /// listens. `tag` names its files in the namespace's directory.
    pub fn start(ns: &Netns, tag: &str, iface: &str, filter: &str) -> Capture {
        let out = ns.dir().join(format!("{tag}.tcpdump"));
        let err = ns.dir().join(format!("{tag}.tcpdump.err"));
        let mut args = vec!["-i", iface, "-n", "-v", "-l", "--immediate-mode"];
        args.extend(filter.split_whitespace());
        let child = ns
            .command("tcpdump", &args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("capture file"))
            .stderr(std::fs::File::create(&err).expect("capture log"))
            .spawn()
            .expect("starting tcpdump");
        let cap = Capture { child: Some(child), out, err };
        let listening = poll(Duration::from_secs(10), Duration::from_millis(50), || {
            std::fs::read_to_string(&cap.err).ok().filter(|e| e.contains("listening on")).map(|_| ())
        });
        assert!(
            listening.is_some(),
            "tcpdump did not start: {}",
            std::fs::read_to_string(&cap.err).unwrap_or_default()
        );
        cap
    }

    /// What it decoded so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Stops it (SIGINT flushes its output) and returns what it decoded.
    pub fn stop(mut self) -> String {
        self.end();
        self.text()
    }

    fn end(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs tcpdump: the pid is tcpdump's.
            signal(c.id(), "INT");
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.end();
    }
}

//! [`Daemon`]: `lanyard daemon` in a test namespace with its own socket,
//! state directory and log; start, stop, restart, and the CLI that talks
//! to it.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::Netns;
use super::privilege::tool;
use super::process::{describe, run, show, signal, stdout, wait_timeout, TempDir};

/// The lanyard binary under test.
pub const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");

/// How long one CLI call may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon may take to answer on its socket after start.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// `lanyard daemon` running in a namespace, with its own socket and state
/// directory. Drop stops it (SIGTERM, then SIGKILL) and, if the test is
/// failing, prints its log.
pub struct Daemon {
    netns: String,
    child: Option<Child>,
    socket: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    starts: usize,
    env: Vec<(String, String)>,
    /// A command and its arguments the daemon runs under (between
    /// `ip netns exec NS` and lanyard), e.g. to give it a mount namespace.
    wrapper: Vec<String>,
    /// Extra `lanyard daemon` arguments (e.g. `--etcd URL --node NAME`).
    args: Vec<String>,
    /// For a daemon on a private tmpfs: the process that holds the mount
    /// namespace with the tmpfs, so restarts find the same state.
    holder: Option<Child>,
    tmp: TempDir,
}

impl Daemon {
    /// Starts the daemon in `ns` and waits until it answers.
    pub fn start(ns: &Netns) -> Daemon {
        Daemon::start_with(ns, &[])
    }

    /// Starts the daemon in `ns` with extra `lanyard daemon` arguments
    /// (kept for restarts) and waits until it answers.
    pub fn start_with(ns: &Netns, args: &[&str]) -> Daemon {
        let tmp = TempDir::new("daemon");
        let mut d = Daemon {
            netns: ns.name().to_string(),
            child: None,
            socket: tmp.path().join("l.sock"),
            state_dir: tmp.path().join("state"),
            log: tmp.path().join("daemon.log"),
            starts: 0,
            env: Vec::new(),
            wrapper: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
            holder: None,
            tmp,
        };
        d.spawn();
        d
    }

    /// Starts the daemon in `ns` under `wrapper` (a command and its
    /// arguments between `ip netns exec NS` and lanyard, kept for
    /// restarts), with extra `lanyard daemon` arguments.
    pub fn start_wrapped(ns: &Netns, wrapper: &[&str], args: &[&str]) -> Daemon {
        let tmp = TempDir::new("daemon");
        let mut d = Daemon {
            netns: ns.name().to_string(),
            child: None,
            socket: tmp.path().join("l.sock"),
            state_dir: tmp.path().join("state"),
            log: tmp.path().join("daemon.log"),
            starts: 0,
            env: Vec::new(),
            wrapper: wrapper.iter().map(|a| a.to_string()).collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
            holder: None,
            tmp,
        };
        d.spawn();
        d
    }

    /// Starts the daemon in `ns` with its state directory on a private
    /// tmpfs of `size` (e.g. "1m"), in a mount namespace of its own that a
    /// small holder process keeps (so restarts find the same state). The
    /// namespace is a slave of the host's: `ip netns add` mounts made later
    /// reach it, its tmpfs never reaches the host; it goes with the holder.
    pub fn start_on_tmpfs(ns: &Netns, size: &str) -> Daemon {
        let tmp = TempDir::new("daemon");
        let state_dir = tmp.path().join("state");
        fs::create_dir_all(&state_dir).expect("state dir");
        let script =
            format!("mount -t tmpfs -o size={size},mode=0700 tmpfs '{}' && exec sleep 3600", state_dir.display());
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("the mount holder starts");
        let pid = holder.id().to_string();
        let mounted = (0..100).any(|_| {
            let mounts = fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default();
            let found = mounts.lines().any(|l| l.split(' ').nth(1) == Some(&state_dir.display().to_string()));
            if !found {
                sleep(Duration::from_millis(50));
            }
            found
        });
        assert!(mounted, "the tmpfs for the state directory was not mounted");
        let mut d = Daemon {
            netns: ns.name().to_string(),
            child: None,
            socket: tmp.path().join("l.sock"),
            state_dir,
            log: tmp.path().join("daemon.log"),
            starts: 0,
            env: Vec::new(),
            wrapper: ["nsenter", "--target", &pid, "--mount", "--"].iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            holder: Some(holder),
            tmp,
        };
        d.spawn();
        d
    }

    /// Runs `prog args` in the daemon's mount namespace (where its state
    /// directory may be a private tmpfs).
    pub fn in_its_mounts(&self, prog: &str, args: &[&str]) -> Output {
        let pid = self.holder.as_ref().map_or_else(|| self.pid(), Child::id).to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &pid, "--mount", "--"]).arg(prog).args(args);
        run(&mut cmd, Duration::from_secs(60))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        use std::io::Write;
        let _ = writeln!(log, "===== lanyard daemon start #{} =====", self.starts);
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.netns])
            .args(&self.wrapper)
            .arg(LANYARD)
            .arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.args)
            .env_remove("LANYARD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log));
        if std::env::var_os("LANYARD_LOG").is_none() {
            cmd.env("LANYARD_LOG", "info");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{}`: {e}", show(&cmd)));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("lanyard daemon exited during start-up ({status}); log:\n{}", self.log());
            }
            if self.socket.exists() {
                let o = run(&mut self.cli_command(&["net", "list"]), Duration::from_secs(10));
                if o.status.success() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "lanyard daemon did not answer on {} within {DAEMON_START_TIMEOUT:?}; log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Sets (or, with None, removes) an environment variable for the next
    /// starts of the daemon.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Whether the daemon process has exited (it is then reaped).
    pub fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_timeout(child, within)?;
        self.child = None;
        Some(status)
    }

    /// Starts the daemon again after it exited by itself.
    pub fn respawn(&mut self) {
        self.spawn();
    }

    /// Pid of the running daemon (of `ip netns exec`, which execs it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon is running").id()
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Everything the daemon wrote to stdout/stderr, over all its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and returns its exit status. Panics if
    /// it does not exit within [`DAEMON_STOP_TIMEOUT`] (it is then killed).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        signal(child.id(), "TERM");
        match wait_timeout(&mut child, DAEMON_STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lanyard daemon ignored SIGTERM for {DAEMON_STOP_TIMEOUT:?}; killed it; log:\n{}", self.log());
            }
        }
    }

    /// Starts the daemon again after [`stop`](Self::stop), on the same
    /// socket and state directory, and waits until it answers (for tests
    /// that change something while it is down).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// SIGTERM, wait for exit (which must be clean), start again on the
    /// same state directory and wait until it answers.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "lanyard daemon exited with {status} on SIGTERM; log:\n{}", self.log());
        self.spawn();
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LANYARD);
        c.arg("--socket").arg(&self.socket).args(args).env_remove("LANYARD_SOCKET").env_remove("LANYARD_TOKEN");
        c
    }

    /// Runs `lanyard --socket S ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(&mut self.cli_command(args), CLI_TIMEOUT)
    }

    /// Runs the CLI; panics (with the daemon log) unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{}\n--- daemon log ---\n{}",
            describe(&format!("lanyard {}", args.join(" ")), &o),
            self.log()
        );
        stdout(&o)
    }

    /// Runs the CLI with `-o json` (added unless present) and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a: Vec<&str> = args.to_vec();
        if !a.windows(2).any(|w| w == ["-o", "json"]) {
            a.extend(["-o", "json"]);
        }
        let text = self.cli_ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`lanyard {}` printed no JSON ({e}):\n{text}", a.join(" ")))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if wait_timeout(&mut child, DAEMON_STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- lanyard daemon log ({}) ---\n{}--- end of daemon log ---", self.log.display(), self.log());
        }
    }
}

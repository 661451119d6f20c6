//! [`EchoServer`]: a TCP and UDP listener in a test namespace that answers
//! every question with its name and the address it saw the asker come
//! from, and [`ask`], the question. Floating IPs and port forwards are
//! proven with them: who answered, and whom it saw.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::netns::Netns;

/// The listener: UDP and TCP on a port, answering `NAME PEER-ADDRESS`.
const SERVER: &str = r#"
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
u.bind(("0.0.0.0", port))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port))
t.listen(16)
def tcp():
    while True:
        c, a = t.accept()
        c.sendall(("%s %s\n" % (name, a[0])).encode())
        c.close()
threading.Thread(target=tcp, daemon=True).start()
while True:
    d, a = u.recvfrom(2048)
    u.sendto(("%s %s" % (name, a[0])).encode(), a)
"#;

/// One question: `udp|tcp HOST PORT`, prints the answer or `-` (refused
/// or no answer within its time).
const ASK: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        s.sendto(b"?", (host, port))
        print(s.recvfrom(2048)[0].decode())
    else:
        s = socket.create_connection((host, port), timeout=2.0)
        print(s.recv(2048).decode().strip())
except Exception:
    print("-")
"#;

/// A running listener, killed and reaped on drop.
pub struct EchoServer(Child);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a listener called `name` on `port` in `ns` and waits until it
/// answers (5 s at most, else the test fails).
pub fn echo_server(ns: &Netns, name: &str, port: u16) -> EchoServer {
    let mut cmd = ns.command("python3", &["-c", SERVER, name, &port.to_string()]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let running = EchoServer(cmd.spawn().expect("the listener starts"));
    let ok = (0..50).any(|_| {
        ask(ns, "udp", "127.0.0.1", port).starts_with(name) || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(ok, "{name}'s listener never answered");
    running
}

/// The answer to one question from `ns`: `NAME PEER` or `-`.
pub fn ask(ns: &Netns, proto: &str, host: &str, port: u16) -> String {
    let out = ns.exec("python3", &["-c", ASK, proto, host, &port.to_string()]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

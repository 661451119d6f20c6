//! systemd's service notification protocol (sd_notify(3)): one datagram
//! of `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET`.
//!
//! With `Type=notify`, systemd holds back units ordered after lanyard (VMs
//! whose QEMU runs `lanyard-ifup`) until `READY=1`, which the daemon sends
//! once it has reconciled the kernel and listens on its socket. Without
//! `$NOTIFY_SOCKET` (not run by systemd) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` names no usable address.
    #[error("NOTIFY_SOCKET={0:?} is neither a path nor an abstract socket name (@NAME)")]
    Address(String),
    /// The datagram could not be sent.
    #[error("cannot notify systemd at {socket}: {source}")]
    Send {
        /// `$NOTIFY_SOCKET`.
        socket: String,
        /// The error of socket(2) or sendto(2).
        source: std::io::Error,
    },
}

/// Sends `state` (e.g. `READY=1\nSTATUS=...`) to `$NOTIFY_SOCKET`. Ok(false)
/// when the variable is not set.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(socket) if !socket.is_empty() => send(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the socket `socket` names: a path, or `@NAME` for the
/// abstract namespace (as systemd writes it).
pub fn send(socket: &str, state: &str) -> Result<(), NotifyError> {
    let addr = address(socket)?;
    let err = |source| NotifyError::Send { socket: socket.to_string(), source };
    let sock = UnixDatagram::unbound().map_err(err)?;
    sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    Ok(())
}

fn address(socket: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::Address(socket.to_string());
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(socket).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

/// The message that says the daemon is ready.
pub fn ready_message(networks: usize, active: usize) -> String {
    format!("READY=1\nSTATUS=serving; {active} of {networks} networks active\nMAINPID={}\n", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("lanyard-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), &ready_message(2, 1)).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("READY=1\n") && text.contains("STATUS=serving; 1 of 2 networks active"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        let name = format!("lanyard-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(&format!("@{name}"), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn odd_addresses_are_refused() {
        for bad in ["relative/path", "x"] {
            assert!(matches!(send(bad, "READY=1"), Err(NotifyError::Address(_))), "{bad}");
        }
        assert!(matches!(send("/nonexistent/lanyard/notify.sock", "READY=1"), Err(NotifyError::Send { .. })));
    }
}

//! The DHCP socket of one network: bound to port 67 on the network's bridge
//! only (SO_BINDTODEVICE), so servers of several networks share the port and
//! a request is answered by the network it arrived on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::{Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::wire::Request;
use super::writer::LeaseWriter;
use super::{handle, Decision, Destination, DhcpConfig};
use crate::ipam::AddressBook;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Packets whose handling panicked, over all networks. A panic is a bug,
/// but it must cost one packet, never the network's DHCP service: a dead
/// server lets a rogue DHCP server in a guest win every client.
static HANDLER_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many packets' handling panicked since the daemon started.
pub fn handler_panics() -> u64 {
    HANDLER_PANICS.load(Ordering::Relaxed)
}

/// Parses and answers one packet. `None` when it is not served.
pub fn process(
    buf: &[u8],
    book: &Mutex<AddressBook>,
    cfg: &DhcpConfig,
    t: u64,
    last_expire: &mut u64,
) -> Option<Decision> {
    let req = match Request::parse(buf) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("ignoring a DHCP packet: {e}");
            return None;
        }
    };
    let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
    if t > *last_expire + 60 {
        book.expire(t);
        *last_expire = t;
    }
    Some(handle(&mut book, cfg, &req, t))
}

/// Opens the server socket on `bridge`.
pub fn bind(bridge: &str) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(bridge.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)).into())?;
    UdpSocket::from_std(s.into())
}

/// Serves DHCP on `socket` until the task is aborted.
///
/// A reply that depends on a lease change is sent by its own task once the
/// lease writer has committed, while this loop goes on receiving: requests
/// that arrive during one commit share the next one (group commit), instead
/// of each waiting for a commit of its own.
pub async fn serve(
    net: String,
    socket: UdpSocket,
    book: Arc<Mutex<AddressBook>>,
    cfg: DhcpConfig,
    writer: LeaseWriter,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 1500];
    let mut last_expire = now();
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(net, "dhcp receive failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let t = now();
        let outcome = catch_unwind(AssertUnwindSafe(|| process(&buf[..len], &book, &cfg, t, &mut last_expire)));
        let decision = match outcome {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(_) => {
                let n = HANDLER_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(net, %peer, panics = n, "a DHCP packet made the handler panic; packet dropped, server goes on");
                continue;
            }
        };
        let Some((reply, dest)) = decision.reply else {
            if let Err(e) = writer.commit(decision.persist).await {
                tracing::error!(net, "lease change not saved: {e}");
            }
            continue;
        };
        if decision.persist.is_empty() {
            send(&net, &socket, &reply, dest).await;
        } else {
            let (net, socket, writer) = (net.clone(), socket.clone(), writer.clone());
            tokio::spawn(async move {
                match writer.commit(decision.persist).await {
                    Ok(()) => send(&net, &socket, &reply, dest).await,
                    // No ACK for a lease that is not durable; the client retries.
                    Err(e) => tracing::error!(net, "lease not saved, reply withheld: {e}"),
                }
            });
        }
    }
}

async fn send(net: &str, socket: &UdpSocket, reply: &dhcproto::v4::Message, dest: Destination) {
    let mut out = Vec::with_capacity(400);
    match catch_unwind(AssertUnwindSafe(|| reply.encode(&mut Encoder::new(&mut out)))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(net, "cannot encode reply: {e}");
            return;
        }
        Err(_) => {
            HANDLER_PANICS.fetch_add(1, Ordering::Relaxed);
            tracing::error!(net, "encoding a DHCP reply panicked; reply dropped");
            return;
        }
    }
    let to = match dest {
        Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
        Destination::Client(ip) => SocketAddrV4::new(ip, 68),
        Destination::Relay(ip) => SocketAddrV4::new(ip, 67),
    };
    if let Err(e) = socket.send_to(&out, to).await {
        tracing::warn!(net, %to, "dhcp send failed: {e}");
    }
}

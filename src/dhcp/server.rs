//! The DHCP socket of one network: bound to port 67 on the network's bridge
//! only (SO_BINDTODEVICE), so servers of several networks share the port and
//! a request is answered by the network it arrived on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::writer::LeaseWriter;
use super::{handle, Destination, DhcpConfig};
use crate::ipam::AddressBook;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
        let Ok(req) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..len])) else {
            tracing::debug!(net, %peer, "ignoring a malformed DHCP packet");
            continue;
        };
        let t = now();
        let decision = {
            let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
            if t > last_expire + 60 {
                book.expire(t);
                last_expire = t;
            }
            handle(&mut book, &cfg, &req, t)
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
    if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
        tracing::error!(net, "cannot encode reply: {e}");
        return;
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

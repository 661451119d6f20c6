//! The built-in DNS server of a network: answers A and PTR for guest names
//! (ports' VM names and the host names clients send in DHCP) in the
//! network's domain, and forwards everything else to the host's resolvers,
//! except on isolated networks, which reach nothing beyond themselves.
//!
//! [`answer`] is pure (message in, decision out) so it is unit-tested
//! without sockets; [`serve`] owns the UDP socket on the gateway address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::dhcp::server::now;
use crate::ipam::AddressBook;

/// TTL of lanyard's answers: short, because guests come and go.
pub const TTL: u32 = 5;
/// How long a forwarded query waits for the upstream resolver.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: relay the query to an upstream resolver.
    Forward,
    /// Not a DNS query; drop it.
    Drop,
}

fn reply_with(
    req: &Message,
    code: ResponseCode,
    answers: Vec<Record>,
    authoritative: bool,
    forwards: bool,
) -> Decision {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = forwards;
    resp.metadata.authoritative = authoritative;
    resp.metadata.response_code = code;
    resp.queries = req.queries.clone();
    resp.answers = answers;
    resp.edns = req.edns.clone();
    match resp.to_vec() {
        Ok(bytes) => Decision::Reply(bytes),
        Err(_) => Decision::Drop,
    }
}

/// The guest host name a query asks about, if the name is local:
/// `host` or `host.<domain>`.
fn local_host(name: &Name, domain: &Name) -> Option<String> {
    let labels: Vec<String> = name.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
    if labels.len() == 1 {
        return Some(labels[0].clone());
    }
    if labels.len() == usize::from(domain.num_labels()) + 1 && domain.zone_of(name) {
        return Some(labels[0].clone());
    }
    None
}

/// Decides how to answer `query` for the network whose names `book` holds.
pub fn answer(query: &[u8], book: &AddressBook, forwards: bool, now: u64) -> Decision {
    let Ok(req) = Message::from_vec(query) else { return Decision::Drop };
    let Some(q) = req.queries.first() else {
        return reply_with(&req, ResponseCode::FormErr, vec![], false, forwards);
    };
    let net = book.network();
    let Ok(domain) = Name::from_ascii(format!("{}.", net.domain)) else { return Decision::Drop };
    let name = q.name().to_lowercase();

    if q.query_type() == RecordType::PTR {
        if let Ok(ipnet::IpNet::V4(v4)) = name.parse_arpa_name() {
            let ip = v4.addr();
            if v4.prefix_len() == 32 && net.subnet.contains(&ip) {
                let host = if ip == net.gateway { Some("gateway".to_string()) } else { book.reverse(ip, now) };
                return match host.and_then(|h| Name::from_ascii(format!("{h}.{}.", net.domain)).ok()) {
                    Some(target) => {
                        let rec = Record::from_rdata(q.name().clone(), TTL, RData::PTR(PTR(target)));
                        reply_with(&req, ResponseCode::NoError, vec![rec], true, forwards)
                    }
                    None => reply_with(&req, ResponseCode::NXDomain, vec![], true, forwards),
                };
            }
        }
    } else if let Some(host) = local_host(&name, &domain) {
        let ip = if host == "gateway" { Some(net.gateway) } else { book.resolve(&host, now) };
        return match ip {
            Some(ip) if matches!(q.query_type(), RecordType::A | RecordType::ANY) => {
                let rec = Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip)));
                reply_with(&req, ResponseCode::NoError, vec![rec], true, forwards)
            }
            // The name exists, but has no record of this type (e.g. AAAA).
            Some(_) => reply_with(&req, ResponseCode::NoError, vec![], true, forwards),
            None if forwards && name.num_labels() > 1 => {
                reply_with(&req, ResponseCode::NXDomain, vec![], true, forwards)
            }
            None if forwards => Decision::Forward,
            None => reply_with(&req, ResponseCode::NXDomain, vec![], true, forwards),
        };
    }
    if forwards {
        Decision::Forward
    } else {
        reply_with(&req, ResponseCode::Refused, vec![], false, forwards)
    }
}

/// The host's resolvers from resolv.conf, minus `own` (no loops).
pub fn upstreams(resolv_conf: &str, own: Ipv4Addr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .filter(|ip| *ip != IpAddr::V4(own))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Opens the DNS socket on the gateway address, answering only queries
/// that arrive on the network's bridge (like libvirt's dnsmasq, which answers
/// on virbr0 only): guests' names are not the outside's business.
/// SO_REUSEADDR lets a restarted network bind while the old, aborted task
/// is still dropping its socket.
pub fn bind(gateway: Ipv4Addr, bridge: &str) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(bridge.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((gateway, 53)).into())?;
    UdpSocket::from_std(s.into())
}

async fn forward(query: Vec<u8>, upstreams: Arc<Vec<SocketAddr>>) -> Option<Vec<u8>> {
    for up in upstreams.iter() {
        let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let Ok(sock) = UdpSocket::bind(local).await else { continue };
        if sock.send_to(&query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(FORWARD_TIMEOUT, sock.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Serves DNS on `socket` until the task is aborted.
pub async fn serve(
    net: String,
    socket: UdpSocket,
    book: Arc<Mutex<AddressBook>>,
    forwards: bool,
    upstreams: Vec<SocketAddr>,
) {
    let socket = Arc::new(socket);
    let upstreams = Arc::new(upstreams);
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(net, "dns receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let decision = {
            let book = book.lock().unwrap_or_else(|p| p.into_inner());
            answer(&query, &book, forwards, now())
        };
        match decision {
            Decision::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Decision::Forward => {
                let (socket, upstreams) = (socket.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let reply = match forward(query.clone(), upstreams).await {
                        Some(r) => Some(r),
                        None => match Message::from_vec(&query) {
                            Ok(req) => match reply_with(&req, ResponseCode::ServFail, vec![], false, true) {
                                Decision::Reply(b) => Some(b),
                                _ => None,
                            },
                            Err(_) => None,
                        },
                    };
                    if let Some(r) = reply {
                        let _ = socket.send_to(&r, peer).await;
                    }
                });
            }
            Decision::Drop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mac, NetworkSpec};
    use hickory_proto::op::{MessageType, OpCode, Query};

    fn book() -> AddressBook {
        let net = NetworkSpec {
            name: "default".into(),
            mode: "nat".into(),
            subnet: "192.168.122.0/24".into(),
            ..Default::default()
        }
        .validate(|| "lybr0".into())
        .unwrap();
        let mut b = AddressBook::new(net);
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        b.reserve_fixed(mac, Some("192.168.122.10".parse().unwrap()), 0).unwrap();
        b.set_name(mac, "vm1");
        let dynamic = Mac([0x52, 0x54, 0, 0, 0, 2]);
        let ip = b.offer(dynamic, None, 0).unwrap();
        b.ack(dynamic, ip, 0, 3600, Some("laptop".into()), None).unwrap();
        b
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn reply(d: Decision) -> Message {
        match d {
            Decision::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn guests_resolve_by_vm_name_and_dhcp_hostname() {
        let b = book();
        for name in ["vm1.default.", "VM1.default.", "vm1."] {
            let r = reply(answer(&query(name, RecordType::A), &b, true, 10));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(r.answers[0].data, RData::A(A("192.168.122.10".parse().unwrap())));
            assert_eq!(r.metadata.id, 7);
        }
        let r = reply(answer(&query("laptop.default.", RecordType::A), &b, true, 10));
        assert_eq!(r.answers[0].data, RData::A(A("192.168.122.2".parse().unwrap())));
        let r = reply(answer(&query("10.122.168.192.in-addr.arpa.", RecordType::PTR), &b, true, 10));
        assert_eq!(r.answers[0].data, RData::PTR(PTR(Name::from_ascii("vm1.default.").unwrap())));
    }

    #[test]
    fn unknown_local_names_are_nxdomain_and_others_forward() {
        let b = book();
        let r = reply(answer(&query("nobody.default.", RecordType::A), &b, true, 10));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(answer(&query("example.org.", RecordType::A), &b, true, 10), Decision::Forward);
        let r = reply(answer(&query("vm1.default.", RecordType::AAAA), &b, true, 10));
        assert!(r.answers.is_empty() && r.metadata.response_code == ResponseCode::NoError);
    }

    #[test]
    fn isolated_networks_never_forward() {
        let b = book();
        let r = reply(answer(&query("example.org.", RecordType::A), &b, false, 10));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        let r = reply(answer(&query("vm1.default.", RecordType::A), &b, false, 10));
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn expired_hostnames_vanish() {
        let b = book();
        let r = reply(answer(&query("laptop.default.", RecordType::A), &b, true, 7200));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn upstreams_skip_ourselves() {
        let conf = "# x\nnameserver 10.0.0.53\nnameserver 192.168.122.1\nsearch lan\nnameserver ::1\n";
        assert_eq!(upstreams(conf, "192.168.122.1".parse().unwrap()).len(), 2);
    }
}

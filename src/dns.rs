//! The built-in DNS server of a network: answers A and PTR for guest names
//! (ports' VM names and the host names clients send in DHCP) in the
//! network's domain, and forwards everything else to the host's resolvers,
//! except on isolated networks, which reach nothing beyond themselves.
//!
//! [`answer`] is pure (message in, decision out) so it is unit-tested
//! without sockets; [`serve_udp`] and [`serve_tcp`] own the sockets on the
//! gateway address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

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

/// Opens the DNS sockets (UDP and TCP) on the gateway address, answering
/// only queries that arrive on the network's bridge (like libvirt's
/// dnsmasq, which answers on virbr0 only): guests' names are not the
/// outside's business. SO_REUSEADDR lets a restarted network bind while the
/// old, aborted task is still dropping its sockets.
pub fn bind(gateway: Ipv4Addr, ifname: &str) -> std::io::Result<(UdpSocket, TcpListener)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::from((gateway, 53)).into();
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    udp.set_reuse_address(true)?;
    udp.bind_device(Some(ifname.as_bytes()))?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr)?;
    let tcp = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.bind_device(Some(ifname.as_bytes()))?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr)?;
    tcp.listen(64)?;
    Ok((UdpSocket::from_std(udp.into())?, TcpListener::from_std(tcp.into())?))
}

/// Forwarded queries waiting for an upstream at once, per network. A
/// guest flooding names that must be forwarded cannot make the daemon hold
/// more tasks and sockets than this.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 256;
/// Queries a client may send per second, sustained, and in a burst.
pub const CLIENT_QPS: f64 = 100.0;
/// See [`CLIENT_QPS`].
pub const CLIENT_BURST: f64 = 200.0;
/// Clients remembered by the rate limiter before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A token bucket per client address: who may ask how often.
#[derive(Debug, Default)]
pub struct ClientLimiter {
    buckets: std::collections::HashMap<IpAddr, (f64, std::time::Instant)>,
    /// Queries refused for exceeding the rate.
    pub limited: u64,
}

impl ClientLimiter {
    /// Whether `client` may ask now; takes one token if so.
    pub fn allow(&mut self, client: IpAddr, at: std::time::Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED_CLIENTS && !self.buckets.contains_key(&client) {
            // Forget clients whose bucket has refilled: they lose nothing.
            let full = Duration::from_secs_f64(CLIENT_BURST / CLIENT_QPS);
            self.buckets.retain(|_, (_, last)| at.duration_since(*last) < full);
        }
        let (tokens, last) = self.buckets.entry(client).or_insert((CLIENT_BURST, at));
        *tokens = (*tokens + at.duration_since(*last).as_secs_f64() * CLIENT_QPS).min(CLIENT_BURST);
        *last = at;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.limited += 1;
            false
        }
    }
}

/// Answers queries for one network: locally, or through the upstreams.
pub struct Resolver {
    net: String,
    book: Arc<Mutex<AddressBook>>,
    forwards: bool,
    upstreams: Vec<SocketAddr>,
    in_flight: Arc<tokio::sync::Semaphore>,
    limiter: Mutex<ClientLimiter>,
    /// Queries received (the network's counter, see [`crate::metrics`]).
    queries: Arc<std::sync::atomic::AtomicU64>,
}

/// What to do with one datagram from a client.
enum Next {
    /// Send this now.
    Reply(Vec<u8>),
    /// Forward it (a permit to do so is held).
    Forward(tokio::sync::OwnedSemaphorePermit),
    /// Nothing.
    Drop,
}

impl Resolver {
    /// A resolver over `book`'s names; `forwards` is false on isolated networks.
    pub fn new(net: String, book: Arc<Mutex<AddressBook>>, forwards: bool, upstreams: Vec<SocketAddr>) -> Self {
        Resolver {
            queries: crate::metrics::dns_queries(&net),
            net,
            book,
            forwards,
            upstreams,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
            limiter: Mutex::new(ClientLimiter::default()),
        }
    }

    /// Queries refused so far because their client asked too often.
    pub fn rate_limited(&self) -> u64 {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner()).limited
    }

    /// Decides without waiting: a local answer, a forward (with its permit),
    /// or nothing (malformed, or over the client's rate). When every forward
    /// permit is taken the client gets SERVFAIL at once.
    fn decide(&self, query: &[u8], client: IpAddr) -> Next {
        // Every query over UDP and TCP passes here once.
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.limiter.lock().unwrap_or_else(|p| p.into_inner()).allow(client, std::time::Instant::now()) {
            return Next::Drop;
        }
        let decision = {
            let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
            answer(query, &book, self.forwards, now())
        };
        match decision {
            Decision::Reply(bytes) => Next::Reply(bytes),
            Decision::Drop => Next::Drop,
            Decision::Forward => match self.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Next::Forward(permit),
                Err(_) => servfail(query).map_or(Next::Drop, Next::Reply),
            },
        }
    }

    /// The reply to `query` from `client`, if it deserves one.
    async fn resolve(&self, query: &[u8], client: IpAddr) -> Option<Vec<u8>> {
        match self.decide(query, client) {
            Next::Reply(b) => Some(b),
            Next::Drop => None,
            Next::Forward(_permit) => match self.forward(query).await {
                Some(r) => Some(r),
                None => servfail(query),
            },
        }
    }

    /// Asks the upstreams in turn. The socket is connected to the upstream,
    /// so the kernel drops datagrams from anyone else; the query goes out
    /// with a fresh random ID and only a response with that ID and the same
    /// question is taken (a guest cannot feed answers to other guests), then
    /// given back the client's own ID.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        let asked = Message::from_vec(query).ok()?;
        let client_id = query.get(..2)?.to_vec();
        for up in &self.upstreams {
            let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
            let Ok(sock) = UdpSocket::bind(local).await else { continue };
            if sock.connect(up).await.is_err() {
                continue;
            }
            let id: u16 = rand::random();
            let mut out = query.to_vec();
            out[..2].copy_from_slice(&id.to_be_bytes());
            if sock.send(&out).await.is_err() {
                continue;
            }
            let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
            let mut buf = vec![0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                if let Some(reply) = matching_response(&buf[..n], id, &asked) {
                    let mut reply = reply.to_vec();
                    reply[..2].copy_from_slice(&client_id);
                    return Some(reply);
                }
            }
        }
        tracing::debug!(net = self.net, "no upstream resolver answered");
        None
    }
}

/// `bytes` if it is the response to our query `id` about `asked`'s question.
fn matching_response<'a>(bytes: &'a [u8], id: u16, asked: &Message) -> Option<&'a [u8]> {
    let resp = Message::from_vec(bytes).ok()?;
    let ok = resp.metadata.id == id
        && resp.metadata.message_type == hickory_proto::op::MessageType::Response
        && resp.queries == asked.queries;
    ok.then_some(bytes)
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    match reply_with(&req, ResponseCode::ServFail, vec![], false, true) {
        Decision::Reply(b) => Some(b),
        _ => None,
    }
}

/// Serves DNS over UDP on `socket` until the task is aborted. Local answers
/// are sent inline; forwarded queries get a task each (at most
/// [`MAX_FORWARDS_IN_FLIGHT`]), so a slow upstream never holds up guests'
/// names.
pub async fn serve_udp(socket: UdpSocket, resolver: Arc<Resolver>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(net = resolver.net, "dns receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match resolver.decide(&buf[..len], peer.ip()) {
            Next::Drop => {}
            Next::Reply(reply) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            Next::Forward(permit) => {
                let query = buf[..len].to_vec();
                let (socket, resolver) = (socket.clone(), resolver.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = resolver.forward(&query).await.or_else(|| servfail(&query)) {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

/// DNS-over-TCP connections served at once, per network.
pub const MAX_TCP_CONNECTIONS: usize = 64;

/// How long an idle DNS-over-TCP connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Serves DNS over TCP (RFC 7766: two-byte length before each message).
pub async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Over the limit, the connection is closed at once.
        let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let mut len = [0u8; 2];
                match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(reply) = resolver.resolve(&query, peer.ip()).await else { return };
                let Ok(n) = u16::try_from(reply.len()) else { return };
                if stream.write_all(&n.to_be_bytes()).await.is_err() || stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;
    use hickory_proto::op::{MessageType, OpCode, Query};

    fn book() -> AddressBook {
        let net = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
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
        assert_eq!(r.answers[0].data, RData::A(A("192.168.122.128".parse().unwrap())));
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
    fn each_client_has_its_own_rate() {
        let mut l = ClientLimiter::default();
        let t = std::time::Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let allowed = (0..1000).filter(|_| l.allow(a, t)).count();
        assert_eq!(allowed, CLIENT_BURST as usize);
        assert!(l.allow(b, t), "another client is not held back");
        assert!(l.allow(a, t + Duration::from_millis(50)), "tokens come back with time");
        assert_eq!(l.limited, 1000 - CLIENT_BURST as u64);
    }

    /// A fake upstream on loopback: for each query it first sends a forged
    /// answer from another socket, then one with a wrong ID from the right
    /// socket, then the real answer.
    #[tokio::test]
    async fn forwarding_takes_only_the_answer_it_asked_for() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let answer_with = |id: u16, ip: &str| {
                let mut m = Message::response(id, OpCode::Query);
                m.queries = q.queries.clone();
                m.answers = vec![Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(A(ip.parse().unwrap())))];
                m.to_vec().unwrap()
            };
            forger.send_to(&answer_with(q.metadata.id, "6.6.6.6"), from).await.unwrap();
            upstream.send_to(&answer_with(q.metadata.id.wrapping_add(1), "6.6.6.7"), from).await.unwrap();
            upstream.send_to(&answer_with(q.metadata.id, "93.184.216.34"), from).await.unwrap();
        });
        let r = Resolver::new("default".into(), Arc::new(Mutex::new(book())), true, vec![addr]);
        let reply = r.resolve(&query("example.org.", RecordType::A), "192.168.122.9".parse().unwrap()).await.unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 7, "the client's own ID comes back");
        assert_eq!(m.answers[0].data, RData::A(A("93.184.216.34".parse().unwrap())));
    }

    #[test]
    fn upstreams_skip_ourselves() {
        let conf = "# x\nnameserver 10.0.0.53\nnameserver 192.168.122.1\nsearch lan\nnameserver ::1\n";
        assert_eq!(upstreams(conf, "192.168.122.1".parse().unwrap()).len(), 2);
    }
}

//! The built-in DHCPv4 server (no dnsmasq).
//!
//! [`handle`] is the protocol: a pure function from a client message and the
//! network's [`AddressBook`] to a reply and the lease changes to persist.
//! [`server`] owns the socket on the bridge; [`writer`] group-commits lease
//! changes so an ACK is sent only after its lease is durable, without one
//! database round trip per packet.

pub mod server;
pub mod wire;
pub mod writer;

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};

use crate::ipam::AddressBook;
use crate::model::{Lease, LeaseKind, Mode, Network};
use crate::store::LeaseChange;
use wire::Request;

/// Lease time handed to clients (libvirt's dnsmasq default is one hour too).
pub const DEFAULT_LEASE_SECS: u32 = 3600;

/// What the server tells clients of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Server identifier and source address: the gateway.
    pub server_ip: Ipv4Addr,
    /// Subnet mask.
    pub mask: Ipv4Addr,
    /// Broadcast address.
    pub broadcast: Ipv4Addr,
    /// Default router, if the mode routes anywhere.
    pub router: Option<Ipv4Addr>,
    /// DNS server, when one is served.
    pub dns: Option<Ipv4Addr>,
    /// DNS domain.
    pub domain: String,
    /// Interface MTU option.
    pub mtu: Option<u16>,
    /// Lease time in seconds.
    pub lease_secs: u32,
}

impl DhcpConfig {
    /// The configuration for `net`. Isolated networks get no router: there is
    /// nowhere to route to.
    pub fn for_network(net: &Network, dns: Option<Ipv4Addr>) -> Self {
        DhcpConfig {
            server_ip: net.gateway,
            mask: net.subnet.netmask(),
            broadcast: net.subnet.broadcast(),
            router: (net.mode != Mode::Isolated).then_some(net.gateway),
            dns,
            domain: net.domain.clone(),
            mtu: net.mtu.and_then(|m| u16::try_from(m).ok()),
            lease_secs: net.lease_time.unwrap_or(DEFAULT_LEASE_SECS),
        }
    }
}

/// Where a reply goes (RFC 2131 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Limited broadcast on the bridge, port 68.
    Broadcast,
    /// Unicast to a client that has an address, port 68.
    Client(Ipv4Addr),
    /// To a relay agent, port 67.
    Relay(Ipv4Addr),
}

/// What a message led to, for the server's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An OFFER was made.
    Offered,
    /// A lease was ACKed.
    Acked,
    /// A request was refused with a NAK.
    Nakked,
    /// No address was free to offer.
    NoAddress,
    /// A lease was given back or declined.
    Released,
    /// An INFORM was answered.
    Informed,
    /// Nothing to do (another server's client, unknown lease, other types).
    Ignored,
}

/// The outcome of one client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Reply and where to send it.
    pub reply: Option<(Message, Destination)>,
    /// Lease changes to persist.
    pub persist: Vec<LeaseChange>,
    /// Whether the reply waits until `persist` is durable. A port's fixed
    /// lease does not: its binding is the port itself, already stored, so
    /// a renewal is answered even when the disk is full.
    pub wait_for_commit: bool,
    /// The client's lease before this message: what the address book must
    /// hold again if `persist` cannot be written.
    pub previous: Option<Lease>,
    /// What happened.
    pub outcome: Outcome,
}

impl Decision {
    fn silent() -> Self {
        Decision { reply: None, persist: Vec::new(), wait_for_commit: false, previous: None, outcome: Outcome::Ignored }
    }

    fn reply(m: Message, to: Destination, outcome: Outcome) -> Self {
        Decision { reply: Some((m, to)), outcome, ..Decision::silent() }
    }
}

fn client_id(req: &Request) -> Option<String> {
    req.client_id.as_ref().map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

fn reply_to(req: &Request, kind: MessageType, cfg: &DhcpConfig) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid)
        .set_flags(Flags::from(req.flags))
        .set_giaddr(req.giaddr)
        .set_chaddr(&req.mac.0)
        .set_siaddr(cfg.server_ip);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    m
}

fn add_config(m: &mut Message, cfg: &DhcpConfig, hostname: Option<&str>, with_lease: bool) {
    let opts = m.opts_mut();
    if with_lease {
        opts.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
        opts.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
        opts.insert(DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
    }
    opts.insert(DhcpOption::SubnetMask(cfg.mask));
    opts.insert(DhcpOption::BroadcastAddr(cfg.broadcast));
    if let Some(r) = cfg.router {
        opts.insert(DhcpOption::Router(vec![r]));
    }
    if let Some(d) = cfg.dns {
        opts.insert(DhcpOption::DomainNameServer(vec![d]));
    }
    opts.insert(DhcpOption::DomainName(cfg.domain.clone()));
    if let Some(mtu) = cfg.mtu {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = hostname {
        opts.insert(DhcpOption::Hostname(h.to_string()));
    }
}

fn destination(req: &Request, reply_kind: MessageType) -> Destination {
    if !req.giaddr.is_unspecified() {
        return Destination::Relay(req.giaddr);
    }
    if reply_kind == MessageType::Nak {
        return Destination::Broadcast;
    }
    if !req.ciaddr.is_unspecified() {
        return Destination::Client(req.ciaddr);
    }
    // A client without an address cannot answer ARP, so unless an ARP entry
    // is planted (not done here) the only reliable way to reach it is
    // broadcast, which RFC 2131 allows when unicast is not possible.
    Destination::Broadcast
}

fn nak(req: &Request, cfg: &DhcpConfig, why: &str) -> Decision {
    let mut m = reply_to(req, MessageType::Nak, cfg);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    Decision::reply(m, destination(req, MessageType::Nak), Outcome::Nakked)
}

/// Answers one client message at time `now` (unix seconds).
pub fn handle(book: &mut AddressBook, cfg: &DhcpConfig, req: &Request, now: u64) -> Decision {
    let (mac, kind) = (req.mac, req.kind);
    let hostname = req.hostname.clone();
    let name_for_client = |book: &AddressBook| hostname.clone().or_else(|| book.name_of(mac).map(String::from));
    match kind {
        MessageType::Discover => match book.offer(mac, req.requested_ip, now) {
            Ok(ip) => {
                let mut m = reply_to(req, MessageType::Offer, cfg);
                m.set_yiaddr(ip);
                add_config(&mut m, cfg, book.name_of(mac), true);
                Decision::reply(m, destination(req, MessageType::Offer), Outcome::Offered)
            }
            // Counted by the server, which logs a summary: no line per packet.
            Err(_) => Decision { outcome: Outcome::NoAddress, ..Decision::silent() },
        },
        MessageType::Request => {
            if let Some(sid) = req.server_id {
                if sid != cfg.server_ip {
                    // The client chose another server's offer.
                    return Decision::silent();
                }
            }
            let Some(ip) = req.requested_ip.or_else(|| (!req.ciaddr.is_unspecified()).then_some(req.ciaddr)) else {
                return nak(req, cfg, "no address requested");
            };
            let previous = book.lease_of(mac).cloned();
            match book.ack(mac, ip, now, cfg.lease_secs, name_for_client(book), client_id(req)) {
                Ok(lease) => {
                    let mut m = reply_to(req, MessageType::Ack, cfg);
                    m.set_yiaddr(ip).set_ciaddr(req.ciaddr);
                    add_config(&mut m, cfg, book.name_of(mac), true);
                    Decision {
                        wait_for_commit: lease.kind == LeaseKind::Dynamic,
                        persist: vec![LeaseChange::Upsert(lease)],
                        previous,
                        ..Decision::reply(m, destination(req, MessageType::Ack), Outcome::Acked)
                    }
                }
                Err(e) => nak(req, cfg, &e.to_string()),
            }
        }
        MessageType::Release => {
            let net = book.network().key().into_owned();
            match book.release(mac, req.ciaddr) {
                Some(l) => Decision {
                    persist: vec![LeaseChange::Remove { net, ip: l.ip }],
                    previous: Some(l),
                    outcome: Outcome::Released,
                    ..Decision::silent()
                },
                None => Decision::silent(),
            }
        }
        MessageType::Decline => {
            let net = book.network().key().into_owned();
            let Some(ip) = req.requested_ip else { return Decision::silent() };
            match book.decline(mac, ip, now) {
                Some(l) => Decision {
                    persist: vec![LeaseChange::Remove { net, ip: l.ip }],
                    previous: Some(l),
                    outcome: Outcome::Released,
                    ..Decision::silent()
                },
                None => Decision::silent(),
            }
        }
        MessageType::Inform => {
            let mut m = reply_to(req, MessageType::Ack, cfg);
            m.set_ciaddr(req.ciaddr);
            add_config(&mut m, cfg, None, false);
            Decision::reply(m, destination(req, MessageType::Ack), Outcome::Informed)
        }
        _ => Decision::silent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LeaseKind, Mac};
    use dhcproto::v4::OptionCode;
    use dhcproto::{Encodable, Encoder};

    /// Puts `m` on the wire and reads it back as the server does.
    fn wire(m: &Message) -> Request {
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        Request::parse(&b).unwrap()
    }

    fn setup() -> (AddressBook, DhcpConfig) {
        let net = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
        let cfg = DhcpConfig::for_network(&net, None);
        (AddressBook::new(net), cfg)
    }

    #[test]
    fn a_networks_lease_time_is_what_clients_are_offered() {
        let mut net = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
        assert_eq!(DhcpConfig::for_network(&net, None).lease_secs, DEFAULT_LEASE_SECS);
        net.lease_time = Some(600);
        assert_eq!(DhcpConfig::for_network(&net, None).lease_secs, 600);
    }

    fn msg(kind: MessageType, mac: [u8; 6], opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest).set_xid(42).set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    #[test]
    fn full_exchange_gives_a_lease_with_options() {
        let (mut book, cfg) = setup();
        let d = handle(&mut book, &cfg, &wire(&msg(MessageType::Discover, MAC, vec![])), 0);
        let (offer, dest) = d.reply.unwrap();
        assert_eq!(dest, Destination::Broadcast);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.xid(), 42);
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(192, 168, 122, 128), "the first address of the dynamic range");
        assert!(d.persist.is_empty(), "an offer is not a lease");
        let req = msg(
            MessageType::Request,
            MAC,
            vec![
                DhcpOption::RequestedIpAddress(ip),
                DhcpOption::ServerIdentifier(cfg.server_ip),
                DhcpOption::Hostname("guest".into()),
            ],
        );
        let d = handle(&mut book, &cfg, &wire(&req), 1);
        let (ack, _) = d.reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ip);
        assert_eq!(
            ack.opts().get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(192, 168, 122, 1)]))
        );
        assert_eq!(
            ack.opts().get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(ack.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
        match &d.persist[..] {
            [LeaseChange::Upsert(l)] => {
                assert_eq!(
                    (l.ip, l.hostname.as_deref(), l.kind, l.expiry),
                    (ip, Some("guest"), LeaseKind::Dynamic, 3601)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renewal_is_unicast_and_foreign_request_is_nakked() {
        let (mut book, cfg) = setup();
        let ip = book.offer(Mac(MAC), None, 0).unwrap();
        book.ack(Mac(MAC), ip, 0, 3600, None, None).unwrap();
        let mut renew = msg(MessageType::Request, MAC, vec![]);
        renew.set_ciaddr(ip);
        let (ack, dest) = handle(&mut book, &cfg, &wire(&renew), 10).reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(dest, Destination::Client(ip));
        let other = msg(MessageType::Request, [0x52, 0x54, 0, 9, 9, 9], vec![DhcpOption::RequestedIpAddress(ip)]);
        let (nak, dest) = handle(&mut book, &cfg, &wire(&other), 10).reply.unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(dest, Destination::Broadcast);
        let wrong_net = msg(
            MessageType::Request,
            [0x52, 0x54, 0, 9, 9, 9],
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5))],
        );
        assert_eq!(
            handle(&mut book, &cfg, &wire(&wrong_net), 10).reply.unwrap().0.opts().msg_type(),
            Some(MessageType::Nak)
        );
    }

    #[test]
    fn requests_for_another_server_are_ignored() {
        let (mut book, cfg) = setup();
        let req = msg(
            MessageType::Request,
            MAC,
            vec![
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 122, 9)),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 122, 254)),
            ],
        );
        assert_eq!(handle(&mut book, &cfg, &wire(&req), 0), Decision::silent());
    }

    #[test]
    fn ports_get_fixed_ip_and_their_vm_name() {
        let (mut book, cfg) = setup();
        let fixed = book.reserve_fixed(Mac(MAC), Some(Ipv4Addr::new(192, 168, 122, 50)), 0).unwrap();
        book.set_name(Mac(MAC), "vm1");
        let (offer, _) = handle(&mut book, &cfg, &wire(&msg(MessageType::Discover, MAC, vec![])), 0).reply.unwrap();
        assert_eq!(offer.yiaddr(), fixed);
        assert_eq!(offer.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("vm1".into())));
    }

    #[test]
    fn release_and_decline_free_and_persist() {
        let (mut book, cfg) = setup();
        let ip = book.offer(Mac(MAC), None, 0).unwrap();
        book.ack(Mac(MAC), ip, 0, 3600, None, None).unwrap();
        let mut rel = msg(MessageType::Release, MAC, vec![]);
        rel.set_ciaddr(ip);
        let d = handle(&mut book, &cfg, &wire(&rel), 1);
        assert_eq!(d.persist, vec![LeaseChange::Remove { net: "default".into(), ip }]);
        assert!(d.reply.is_none());
        let ip2 = book.offer(Mac(MAC), None, 2).unwrap();
        book.ack(Mac(MAC), ip2, 2, 3600, None, None).unwrap();
        let dec = msg(MessageType::Decline, MAC, vec![DhcpOption::RequestedIpAddress(ip2)]);
        assert_eq!(handle(&mut book, &cfg, &wire(&dec), 3).persist.len(), 1);
        let next = book.offer(Mac(MAC), Some(ip2), 4).unwrap();
        assert_ne!(next, ip2, "a declined address rests");
    }

    #[test]
    fn inform_gets_config_without_lease() {
        let (mut book, cfg) = setup();
        let mut inf = msg(MessageType::Inform, MAC, vec![]);
        inf.set_ciaddr(Ipv4Addr::new(192, 168, 122, 77));
        let (ack, dest) = handle(&mut book, &cfg, &wire(&inf), 0).reply.unwrap();
        assert_eq!(dest, Destination::Client(Ipv4Addr::new(192, 168, 122, 77)));
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.yiaddr().is_unspecified());
    }
}

/// Random packets through the whole wire path (parse, answer, encode), as
/// a guest could send them. Deterministic, so a failure reproduces.
#[cfg(test)]
mod wire_path_tests {
    use std::sync::Mutex;

    use dhcproto::{Encodable, Encoder};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for kind in 1..=8u8 {
            let mut m = Message::default();
            m.set_opcode(Opcode::BootRequest).set_xid(7).set_chaddr(&[0x52, 0x54, 0, 0, 0, kind]);
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::from(kind)));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 122, 10 + kind)));
            m.opts_mut().insert(DhcpOption::Hostname(format!("h{kind}")));
            let mut b = Vec::new();
            m.encode(&mut Encoder::new(&mut b)).unwrap();
            out.push(b);
        }
        out
    }

    #[test]
    fn random_mutations_never_panic() {
        let net = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
        let cfg = DhcpConfig::for_network(&net, None);
        let book = Mutex::new(AddressBook::new(net));
        let mut rng = StdRng::seed_from_u64(0x1a2d);
        let seeds = seeds();
        let stats = server::ServerStats::default();
        let mut served = 0;
        for i in 0..100_000u64 {
            let mut p = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..8) {
                match rng.random_range(0..4) {
                    0 if !p.is_empty() => {
                        let at = rng.random_range(0..p.len());
                        p[at] = rng.random();
                    }
                    1 => p.truncate(rng.random_range(0..=p.len())),
                    2 => p.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>())),
                    _ => {
                        // Aim at the header fields and the first options.
                        let at = [1usize, 2, 3, 10, 11, 236, 240, 241, 242, 243][rng.random_range(0..10)];
                        if at < p.len() {
                            p[at] = rng.random();
                        }
                    }
                }
            }
            if let Some(d) = server::process(&p, &book, &cfg, i / 100, &mut server::ServerState::new(0), &stats) {
                served += 1;
                if let Some((reply, _)) = d.reply {
                    let mut out = Vec::new();
                    reply.encode(&mut Encoder::new(&mut out)).unwrap();
                    assert!(wire::Request::parse(&out).is_err(), "a reply must never parse as a request");
                }
            }
        }
        assert!(served > 1000, "the mutations should leave many packets servable, got {served}");
    }
}

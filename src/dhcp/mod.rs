//! The built-in DHCPv4 server (no dnsmasq).
//!
//! [`handle`] is the protocol: a function from a client message and the
//! network's [`AddressBook`] to a reply (written into the caller's buffer)
//! and the lease change to persist. [`server`] owns the socket on the
//! bridge and moves packets in batches ([`batch`]); [`writer`]
//! group-commits lease changes so an ACK is sent only after its lease is
//! durable, without one database round trip per packet. [`reply`] writes
//! replies, [`wire`] reads requests, [`neighbour`] makes unicast replies to
//! clients without an address possible.

pub mod admission;
pub mod batch;
pub mod link;
pub mod neighbour;
pub mod reply;
pub mod server;
pub mod wire;
pub mod writer;

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

use crate::ipam::AddressBook;
use crate::model::{Lease, LeaseKind, Mac, Mode, Network};
use crate::store::LeaseChange;
use reply::Reply;
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
    /// Limited broadcast on the bridge, port 68: the client asked for it
    /// (broadcast flag), or the reply is a NAK.
    Broadcast,
    /// Unicast to a client that has an address, port 68.
    Client(Ipv4Addr),
    /// To a client without an address yet, port 68: to the address it is
    /// given, at its MAC ([`neighbour`] makes the kernel resolve it so).
    Unicast {
        /// The address in the reply's yiaddr.
        ip: Ipv4Addr,
        /// The client's hardware address.
        mac: Mac,
    },
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
    /// The type of the reply written to the caller's buffer, and where it
    /// goes; None when nothing was written.
    pub reply: Option<(MessageType, Destination)>,
    /// The lease change to persist.
    pub persist: Option<LeaseChange>,
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
        Decision { reply: None, persist: None, wait_for_commit: false, previous: None, outcome: Outcome::Ignored }
    }

    fn reply(kind: MessageType, to: Destination, outcome: Outcome) -> Self {
        Decision { reply: Some((kind, to)), outcome, ..Decision::silent() }
    }
}

fn client_id(req: &Request) -> Option<String> {
    use std::fmt::Write;
    req.client_id.as_ref().map(|id| {
        let mut s = String::with_capacity(id.len() * 3);
        for (i, b) in id.iter().enumerate() {
            let sep = if i == 0 { "" } else { ":" };
            let _ = write!(s, "{sep}{b:02x}");
        }
        s
    })
}

/// The network's settings, and the lease times when `with_lease`.
fn add_config(r: &mut Reply<'_>, cfg: &DhcpConfig, hostname: Option<&str>, with_lease: bool) {
    r.ip_option(1, cfg.mask);
    if let Some(router) = cfg.router {
        r.ip_option(3, router);
    }
    if let Some(dns) = cfg.dns {
        r.ip_option(6, dns);
    }
    if let Some(h) = hostname {
        r.option(12, h.as_bytes());
    }
    r.option(15, cfg.domain.as_bytes());
    if let Some(mtu) = cfg.mtu {
        r.option(26, &mtu.to_be_bytes());
    }
    r.ip_option(28, cfg.broadcast);
    if with_lease {
        r.u32_option(51, cfg.lease_secs);
        r.u32_option(58, cfg.lease_secs / 2);
        r.u32_option(59, cfg.lease_secs / 8 * 7);
    }
}

/// Where a reply of `kind` giving `yiaddr` goes.
fn destination(req: &Request, reply_kind: MessageType, yiaddr: Ipv4Addr) -> Destination {
    if !req.giaddr.is_unspecified() {
        return Destination::Relay(req.giaddr);
    }
    if reply_kind == MessageType::Nak {
        return Destination::Broadcast;
    }
    if !req.ciaddr.is_unspecified() {
        return Destination::Client(req.ciaddr);
    }
    if req.wants_broadcast() || yiaddr.is_unspecified() {
        return Destination::Broadcast;
    }
    Destination::Unicast { ip: yiaddr, mac: req.mac }
}

fn nak(out: &mut Vec<u8>, req: &Request, cfg: &DhcpConfig, why: &str) -> Decision {
    let mut r = Reply::begin(out, req, MessageType::Nak, cfg.server_ip);
    r.broadcast_flag().option(56, why.as_bytes());
    r.finish();
    Decision::reply(MessageType::Nak, destination(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED), Outcome::Nakked)
}

/// Answers one client message at time `now` (unix seconds); the reply, if
/// any, is appended to `out`.
pub fn handle(book: &mut AddressBook, cfg: &DhcpConfig, req: &Request, now: u64, out: &mut Vec<u8>) -> Decision {
    let (mac, kind) = (req.mac, req.kind);
    match kind {
        MessageType::Discover => match book.offer(mac, req.requested_ip, now) {
            Ok(ip) => {
                let mut r = Reply::begin(out, req, MessageType::Offer, cfg.server_ip);
                r.yiaddr(ip);
                add_config(&mut r, cfg, book.name_of(mac), true);
                r.finish();
                Decision::reply(MessageType::Offer, destination(req, MessageType::Offer, ip), Outcome::Offered)
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
                return nak(out, req, cfg, "no address requested");
            };
            let previous = book.lease_of(mac).cloned();
            let hostname = req.hostname.clone().or_else(|| book.name_of(mac).map(String::from));
            match book.ack(mac, ip, now, cfg.lease_secs, hostname, client_id(req)) {
                Ok(lease) => {
                    let mut r = Reply::begin(out, req, MessageType::Ack, cfg.server_ip);
                    r.yiaddr(ip).ciaddr(req.ciaddr);
                    add_config(&mut r, cfg, book.name_of(mac), true);
                    r.finish();
                    Decision {
                        wait_for_commit: lease.kind == LeaseKind::Dynamic,
                        persist: Some(LeaseChange::Upsert(lease)),
                        previous,
                        ..Decision::reply(MessageType::Ack, destination(req, MessageType::Ack, ip), Outcome::Acked)
                    }
                }
                Err(e) => nak(out, req, cfg, &e.to_string()),
            }
        }
        MessageType::Release => {
            let net = book.network().key().into_owned();
            match book.release(mac, req.ciaddr) {
                Some(l) => Decision {
                    persist: Some(LeaseChange::Remove { net, ip: l.ip }),
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
                    persist: Some(LeaseChange::Remove { net, ip: l.ip }),
                    previous: Some(l),
                    outcome: Outcome::Released,
                    ..Decision::silent()
                },
                None => Decision::silent(),
            }
        }
        MessageType::Inform => {
            let mut r = Reply::begin(out, req, MessageType::Ack, cfg.server_ip);
            r.ciaddr(req.ciaddr);
            add_config(&mut r, cfg, None, false);
            r.finish();
            Decision::reply(
                MessageType::Ack,
                destination(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED),
                Outcome::Informed,
            )
        }
        _ => Decision::silent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LeaseKind, Mac};
    use dhcproto::v4::{DhcpOption, Flags, Message, Opcode, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    /// Puts `m` on the wire and reads it back as the server does.
    fn wire(m: &Message) -> Request {
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        Request::parse(&b).unwrap()
    }

    /// Runs [`handle`] and reads the reply back as a client would.
    fn answer(book: &mut AddressBook, cfg: &DhcpConfig, req: &Request, now: u64) -> (Decision, Option<Message>) {
        let mut out = Vec::new();
        let d = handle(book, cfg, req, now, &mut out);
        assert_eq!(d.reply.is_some(), !out.is_empty(), "a reply is written exactly when one is decided");
        let m = d.reply.map(|(kind, _)| {
            let m = Message::decode(&mut Decoder::new(&out)).expect("the reply decodes");
            assert_eq!(m.opts().msg_type(), Some(kind));
            assert!(out.len() >= 300, "replies are padded to the BOOTP minimum");
            m
        });
        (d, m)
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
        let (d, offer) = answer(&mut book, &cfg, &wire(&msg(MessageType::Discover, MAC, vec![])), 0);
        let offer = offer.unwrap();
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.xid(), 42);
        assert_eq!(offer.chaddr(), &MAC[..]);
        assert_eq!(offer.siaddr(), cfg.server_ip);
        assert_eq!(offer.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(cfg.server_ip)));
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(192, 168, 122, 128), "the first address of the dynamic range");
        assert_eq!(d.reply.unwrap().1, Destination::Unicast { ip, mac: Mac(MAC) }, "no broadcast flag: unicast");
        assert!(d.persist.is_none(), "an offer is not a lease");
        let req = msg(
            MessageType::Request,
            MAC,
            vec![
                DhcpOption::RequestedIpAddress(ip),
                DhcpOption::ServerIdentifier(cfg.server_ip),
                DhcpOption::Hostname("guest".into()),
            ],
        );
        let (d, ack) = answer(&mut book, &cfg, &wire(&req), 1);
        let ack = ack.unwrap();
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
        assert_eq!(ack.opts().get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
        assert_eq!(ack.opts().get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
        assert_eq!(
            ack.opts().get(OptionCode::BroadcastAddr),
            Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(192, 168, 122, 255)))
        );
        assert_eq!(ack.opts().get(OptionCode::DomainName), Some(&DhcpOption::DomainName(cfg.domain.clone())));
        assert_eq!(ack.opts().get(OptionCode::Hostname), None, "a dynamic client's name is its own, not echoed");
        match &d.persist {
            Some(LeaseChange::Upsert(l)) => {
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
        let (d, ack) = answer(&mut book, &cfg, &wire(&renew), 10);
        assert_eq!(ack.unwrap().opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(d.reply.unwrap().1, Destination::Client(ip));
        let other = msg(MessageType::Request, [0x52, 0x54, 0, 9, 9, 9], vec![DhcpOption::RequestedIpAddress(ip)]);
        let (d, nak) = answer(&mut book, &cfg, &wire(&other), 10);
        let nak = nak.unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(nak.flags().broadcast(), "a NAK has the broadcast flag");
        assert_eq!(d.reply.unwrap().1, Destination::Broadcast);
        let wrong_net = msg(
            MessageType::Request,
            [0x52, 0x54, 0, 9, 9, 9],
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5))],
        );
        assert_eq!(answer(&mut book, &cfg, &wire(&wrong_net), 10).1.unwrap().opts().msg_type(), Some(MessageType::Nak));
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
        assert_eq!(answer(&mut book, &cfg, &wire(&req), 0).0, Decision::silent());
    }

    #[test]
    fn ports_get_fixed_ip_and_their_vm_name() {
        let (mut book, cfg) = setup();
        let fixed = book.reserve_fixed(Mac(MAC), Some(Ipv4Addr::new(192, 168, 122, 50)), 0).unwrap();
        book.set_name(Mac(MAC), "vm1");
        let offer = answer(&mut book, &cfg, &wire(&msg(MessageType::Discover, MAC, vec![])), 0).1.unwrap();
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
        let (d, _) = answer(&mut book, &cfg, &wire(&rel), 1);
        assert_eq!(d.persist, Some(LeaseChange::Remove { net: "default".into(), ip }));
        assert!(d.reply.is_none());
        let ip2 = book.offer(Mac(MAC), None, 2).unwrap();
        book.ack(Mac(MAC), ip2, 2, 3600, None, None).unwrap();
        let dec = msg(MessageType::Decline, MAC, vec![DhcpOption::RequestedIpAddress(ip2)]);
        assert!(answer(&mut book, &cfg, &wire(&dec), 3).0.persist.is_some());
        let next = book.offer(Mac(MAC), Some(ip2), 4).unwrap();
        assert_ne!(next, ip2, "a declined address rests");
    }

    #[test]
    fn inform_gets_config_without_lease() {
        let (mut book, cfg) = setup();
        let mut inf = msg(MessageType::Inform, MAC, vec![]);
        inf.set_ciaddr(Ipv4Addr::new(192, 168, 122, 77));
        let (d, ack) = answer(&mut book, &cfg, &wire(&inf), 0);
        let ack = ack.unwrap();
        assert_eq!(d.reply.unwrap().1, Destination::Client(Ipv4Addr::new(192, 168, 122, 77)));
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.yiaddr().is_unspecified());
    }

    #[test]
    fn a_client_that_asks_for_broadcast_gets_it_and_relays_get_theirs() {
        let (mut book, cfg) = setup();
        let mut discover = msg(MessageType::Discover, MAC, vec![]);
        discover.set_flags(Flags::default().set_broadcast());
        let (d, offer) = answer(&mut book, &cfg, &wire(&discover), 0);
        assert!(offer.unwrap().flags().broadcast(), "the flag is echoed");
        assert_eq!(d.reply.unwrap().1, Destination::Broadcast);
        let relay = Ipv4Addr::new(192, 168, 122, 2);
        let mut relayed = msg(MessageType::Discover, [0x52, 0x54, 0, 7, 7, 7], vec![]);
        relayed.set_giaddr(relay);
        let (d, offer) = answer(&mut book, &cfg, &wire(&relayed), 0);
        assert_eq!(offer.unwrap().giaddr(), relay);
        assert_eq!(d.reply.unwrap().1, Destination::Relay(relay));
    }
}

/// Random packets through the whole wire path (parse, answer, encode), as
/// a guest could send them. Deterministic, so a failure reproduces.
#[cfg(test)]
mod wire_path_tests {
    use dhcproto::v4::{DhcpOption, Message, Opcode};
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
        let mut book = AddressBook::new(net);
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
            let mut out = Vec::new();
            if let Some(d) =
                server::process(&p, &mut book, &cfg, i / 100, &mut server::ServerState::new(0), &stats, &mut out)
            {
                served += 1;
                if d.reply.is_some() {
                    assert!(wire::Request::parse(&out).is_err(), "a reply must never parse as a request");
                }
            }
        }
        assert!(served > 1000, "the mutations should leave many packets servable, got {served}");
    }
}

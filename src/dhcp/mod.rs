//! The built-in DHCPv4 server (no dnsmasq).
//!
//! [`handle`] is the protocol: a pure function from a client message and the
//! network's [`AddressBook`] to a reply and the lease changes to persist.
//! [`server`] owns the socket on the bridge; [`writer`] group-commits lease
//! changes so an ACK is sent only after its lease is durable, without one
//! database round trip per packet.

pub mod server;
pub mod writer;

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use crate::ipam::AddressBook;
use crate::model::{Mac, Mode, Network};
use crate::store::LeaseChange;

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
            lease_secs: DEFAULT_LEASE_SECS,
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

/// The outcome of one client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Reply and where to send it.
    pub reply: Option<(Message, Destination)>,
    /// Lease changes that must be durable before the reply is sent.
    pub persist: Vec<LeaseChange>,
}

impl Decision {
    fn silent() -> Self {
        Decision { reply: None, persist: Vec::new() }
    }
}

fn client_mac(msg: &Message) -> Option<Mac> {
    let c = msg.chaddr();
    (c.len() >= 6).then(|| Mac([c[0], c[1], c[2], c[3], c[4], c[5]]))
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn client_hostname(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) if !h.is_empty() => Some(h.clone()),
        _ => None,
    }
}

fn client_id(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => {
            Some(id.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
        }
        _ => None,
    }
}

fn reply_to(req: &Message, kind: MessageType, cfg: &DhcpConfig) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr())
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

fn destination(req: &Message, reply_kind: MessageType) -> Destination {
    if !req.giaddr().is_unspecified() {
        return Destination::Relay(req.giaddr());
    }
    if reply_kind == MessageType::Nak {
        return Destination::Broadcast;
    }
    if !req.ciaddr().is_unspecified() {
        return Destination::Client(req.ciaddr());
    }
    // A client without an address cannot answer ARP, so unless an ARP entry
    // is planted (not done here) the only reliable way to reach it is
    // broadcast, which RFC 2131 allows when unicast is not possible.
    Destination::Broadcast
}

fn nak(req: &Message, cfg: &DhcpConfig, why: &str) -> Decision {
    let mut m = reply_to(req, MessageType::Nak, cfg);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    Decision { reply: Some((m, destination(req, MessageType::Nak))), persist: Vec::new() }
}

/// Answers one client message at time `now` (unix seconds).
pub fn handle(book: &mut AddressBook, cfg: &DhcpConfig, req: &Message, now: u64) -> Decision {
    if req.opcode() != Opcode::BootRequest {
        return Decision::silent();
    }
    let (Some(mac), Some(kind)) = (client_mac(req), req.opts().msg_type()) else {
        return Decision::silent();
    };
    let hostname = client_hostname(req);
    let name_for_client = |book: &AddressBook| hostname.clone().or_else(|| book.name_of(mac).map(String::from));
    match kind {
        MessageType::Discover => match book.offer(mac, requested_ip(req), now) {
            Ok(ip) => {
                let mut m = reply_to(req, MessageType::Offer, cfg);
                m.set_yiaddr(ip);
                add_config(&mut m, cfg, book.name_of(mac), true);
                Decision { reply: Some((m, destination(req, MessageType::Offer))), persist: Vec::new() }
            }
            Err(e) => {
                tracing::warn!(%mac, "no offer: {e}");
                Decision::silent()
            }
        },
        MessageType::Request => {
            if let Some(sid) = server_id(req) {
                if sid != cfg.server_ip {
                    // The client chose another server's offer.
                    return Decision::silent();
                }
            }
            let Some(ip) = requested_ip(req).or_else(|| (!req.ciaddr().is_unspecified()).then_some(req.ciaddr()))
            else {
                return nak(req, cfg, "no address requested");
            };
            match book.ack(mac, ip, now, cfg.lease_secs, name_for_client(book), client_id(req)) {
                Ok(lease) => {
                    let mut m = reply_to(req, MessageType::Ack, cfg);
                    m.set_yiaddr(ip).set_ciaddr(req.ciaddr());
                    add_config(&mut m, cfg, book.name_of(mac), true);
                    Decision {
                        reply: Some((m, destination(req, MessageType::Ack))),
                        persist: vec![LeaseChange::Upsert(lease)],
                    }
                }
                Err(e) => nak(req, cfg, &e.to_string()),
            }
        }
        MessageType::Release => {
            let net = book.network().name.clone();
            match book.release(mac, req.ciaddr()) {
                Some(l) => Decision { reply: None, persist: vec![LeaseChange::Remove { net, ip: l.ip }] },
                None => Decision::silent(),
            }
        }
        MessageType::Decline => {
            let net = book.network().name.clone();
            let Some(ip) = requested_ip(req) else { return Decision::silent() };
            tracing::warn!(%mac, %ip, "client declined its address: another host is using it");
            match book.decline(mac, ip, now) {
                Some(l) => Decision { reply: None, persist: vec![LeaseChange::Remove { net, ip: l.ip }] },
                None => Decision::silent(),
            }
        }
        MessageType::Inform => {
            let mut m = reply_to(req, MessageType::Ack, cfg);
            m.set_ciaddr(req.ciaddr());
            add_config(&mut m, cfg, None, false);
            Decision { reply: Some((m, destination(req, MessageType::Ack))), persist: Vec::new() }
        }
        _ => Decision::silent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LeaseKind;

    fn setup() -> (AddressBook, DhcpConfig) {
        let net = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
        let cfg = DhcpConfig::for_network(&net, None);
        (AddressBook::new(net), cfg)
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
        let d = handle(&mut book, &cfg, &msg(MessageType::Discover, MAC, vec![]), 0);
        let (offer, dest) = d.reply.unwrap();
        assert_eq!(dest, Destination::Broadcast);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.xid(), 42);
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(192, 168, 122, 2));
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
        let d = handle(&mut book, &cfg, &req, 1);
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
        let (ack, dest) = handle(&mut book, &cfg, &renew, 10).reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(dest, Destination::Client(ip));
        let other = msg(MessageType::Request, [0x52, 0x54, 0, 9, 9, 9], vec![DhcpOption::RequestedIpAddress(ip)]);
        let (nak, dest) = handle(&mut book, &cfg, &other, 10).reply.unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(dest, Destination::Broadcast);
        let wrong_net = msg(
            MessageType::Request,
            [0x52, 0x54, 0, 9, 9, 9],
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5))],
        );
        assert_eq!(handle(&mut book, &cfg, &wrong_net, 10).reply.unwrap().0.opts().msg_type(), Some(MessageType::Nak));
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
        assert_eq!(handle(&mut book, &cfg, &req, 0), Decision::silent());
    }

    #[test]
    fn ports_get_fixed_ip_and_their_vm_name() {
        let (mut book, cfg) = setup();
        let fixed = book.reserve_fixed(Mac(MAC), Some(Ipv4Addr::new(192, 168, 122, 50)), 0).unwrap();
        book.set_name(Mac(MAC), "vm1");
        let (offer, _) = handle(&mut book, &cfg, &msg(MessageType::Discover, MAC, vec![]), 0).reply.unwrap();
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
        let d = handle(&mut book, &cfg, &rel, 1);
        assert_eq!(d.persist, vec![LeaseChange::Remove { net: "default".into(), ip }]);
        assert!(d.reply.is_none());
        let ip2 = book.offer(Mac(MAC), None, 2).unwrap();
        book.ack(Mac(MAC), ip2, 2, 3600, None, None).unwrap();
        let dec = msg(MessageType::Decline, MAC, vec![DhcpOption::RequestedIpAddress(ip2)]);
        assert_eq!(handle(&mut book, &cfg, &dec, 3).persist.len(), 1);
        let next = book.offer(Mac(MAC), Some(ip2), 4).unwrap();
        assert_ne!(next, ip2, "a declined address rests");
    }

    #[test]
    fn inform_gets_config_without_lease() {
        let (mut book, cfg) = setup();
        let mut inf = msg(MessageType::Inform, MAC, vec![]);
        inf.set_ciaddr(Ipv4Addr::new(192, 168, 122, 77));
        let (ack, dest) = handle(&mut book, &cfg, &inf, 0).reply.unwrap();
        assert_eq!(dest, Destination::Client(Ipv4Addr::new(192, 168, 122, 77)));
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.yiaddr().is_unspecified());
    }
}

//! The per-network services the engine starts and stops: the DHCP server
//! and the DNS server of each active network that serves them. Behind the
//! [`Services`] trait, so the engine's mutations are tested without sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::dhcp::writer::LeaseWriter;
use crate::dhcp::{self, DhcpConfig};
use crate::dns;
use crate::ipam::AddressBook;
use crate::model::{Mode, Network};

/// Starts and stops the servers of networks.
pub trait Services: Send {
    /// Starts the servers of `net` unless they run. `resolv_conf` is the
    /// host's resolver configuration, for DNS forwarding. A server that
    /// cannot start is logged; the network stays up without it.
    fn start(&mut self, net: &Network, book: Arc<Mutex<AddressBook>>, resolv_conf: &str);
    /// Stops the servers of the network named `name`, if any run.
    fn stop(&mut self, name: &str);
    /// Whether the servers of `name` run.
    fn running(&self, name: &str) -> bool;
    /// Stops every server.
    fn stop_all(&mut self);
}

/// DHCP and DNS as tokio tasks on the daemon's runtime.
pub struct NetworkServices {
    rt: Handle,
    writer: LeaseWriter,
    tasks: HashMap<String, Vec<JoinHandle<()>>>,
}

impl NetworkServices {
    /// Services that spawn on `rt` and commit leases through `writer`.
    pub fn new(rt: Handle, writer: LeaseWriter) -> Self {
        NetworkServices { rt, writer, tasks: HashMap::new() }
    }
}

impl Services for NetworkServices {
    fn start(&mut self, net: &Network, book: Arc<Mutex<AddressBook>>, resolv_conf: &str) {
        if self.running(&net.key()) {
            return;
        }
        let _guard = self.rt.enter();
        let mut tasks = Vec::new();
        // The gateway's interface: the bridge, or its VLAN device.
        let ifname = net.l3_ifname();
        let dns_socket = dns::bind(net.gateway, &ifname);
        let dns_addr = dns_socket.is_ok().then_some(net.gateway);
        match dns_socket {
            Ok((udp, tcp)) => {
                let forwards = net.mode != Mode::Isolated;
                let upstreams = dns::upstreams(resolv_conf, net.gateway);
                let resolver = Arc::new(dns::Resolver::new(net.key().into_owned(), book.clone(), forwards, upstreams));
                tasks.push(self.rt.spawn(dns::serve_udp(udp, resolver.clone())));
                tasks.push(self.rt.spawn(dns::serve_tcp(tcp, resolver)));
            }
            Err(e) => tracing::error!(net = %net.key(), "cannot open the DNS socket on {}:53: {e}", net.gateway),
        }
        // A flat network's guests get their addresses as cloud-init data.
        if net.serves_dhcp() {
            match dhcp::server::bind(&ifname) {
                Ok(socket) => {
                    let cfg = DhcpConfig::for_network(net, dns_addr);
                    let serve = dhcp::server::serve(
                        net.key().into_owned(),
                        socket,
                        ifname.clone(),
                        book,
                        cfg,
                        self.writer.clone(),
                    );
                    tasks.push(self.rt.spawn(serve));
                }
                Err(e) => tracing::error!(net = %net.key(), "cannot open the DHCP socket on {ifname}: {e}"),
            }
        }
        tracing::info!(net = %net.key(), interface = ifname, dns = ?dns_addr, "dhcp and dns servers started");
        self.tasks.insert(net.key().into_owned(), tasks);
    }

    fn stop(&mut self, name: &str) {
        for h in self.tasks.remove(name).into_iter().flatten() {
            h.abort();
        }
    }

    fn running(&self, name: &str) -> bool {
        self.tasks.get(name).is_some_and(|v| v.iter().any(|h| !h.is_finished()))
    }

    fn stop_all(&mut self) {
        for h in self.tasks.drain().flat_map(|(_, v)| v) {
            h.abort();
        }
    }
}

/// Services for tests: remembers which networks would be served.
#[derive(Debug, Default)]
pub struct FakeServices {
    /// Networks whose servers run.
    pub running: std::collections::BTreeSet<String>,
}

impl Services for FakeServices {
    fn start(&mut self, net: &Network, _book: Arc<Mutex<AddressBook>>, _resolv_conf: &str) {
        self.running.insert(net.key().into_owned());
    }

    fn stop(&mut self, name: &str) {
        self.running.remove(name);
    }

    fn running(&self, name: &str) -> bool {
        self.running.contains(name)
    }

    fn stop_all(&mut self) {
        self.running.clear();
    }
}

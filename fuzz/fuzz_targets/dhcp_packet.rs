//! One UDP payload from a guest through the whole DHCP server path: parse,
//! rate limit, answer from the address book, write the reply. Nothing may
//! panic, and a reply must never read back as a request.
#![no_main]

use std::sync::{Mutex, OnceLock};

use lanyard::dhcp::server::{process, ServerState, ServerStats};
use lanyard::dhcp::DhcpConfig;
use lanyard::ipam::AddressBook;
use lanyard::model::{Mac, NetworkSpec};
use libfuzzer_sys::fuzz_target;

struct World {
    book: Mutex<AddressBook>,
    cfg: DhcpConfig,
    stats: ServerStats,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let net =
            NetworkSpec { name: "fuzz".into(), mode: "nat".into(), subnet: "10.9.0.0/28".into(), ..Default::default() }
                .validate(|| "lybr0".into())
                .expect("a valid network");
        let cfg = DhcpConfig::for_network(&net, Some(net.gateway));
        let mut book = AddressBook::new(net);
        // A port with a fixed IP and a name, as in a real network.
        let port = Mac([0x52, 0x54, 0, 0, 0, 1]);
        book.reserve_fixed(port, None, 0).expect("room for a port");
        book.set_name(port, "vm1");
        World { book: Mutex::new(book), cfg, stats: ServerStats::default() }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // The clock moves with the input so leases expire and get pruned.
    let now = data.first().map_or(0, |b| u64::from(*b) * 97);
    let mut state = ServerState::new(0);
    // Half the inputs run as if the server were overloaded (shedding on).
    state.overloaded = data.get(1).is_some_and(|b| b & 1 == 1);
    let mut out = Vec::new();
    let mut book = w.book.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = process(data, &mut book, &w.cfg, now, &mut state, &w.stats, &mut out) {
        if d.reply.is_some() {
            assert!(lanyard::dhcp::wire::Request::parse(&out).is_err(), "a reply parsed as a request");
        } else {
            assert!(out.is_empty(), "bytes written without a reply");
        }
    }
});

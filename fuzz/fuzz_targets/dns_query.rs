//! One DNS query from a guest through the local resolver's decision: parse,
//! answer from the address book or decide to forward. Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use lanyard::dns::answer;
use lanyard::ipam::AddressBook;
use lanyard::model::{Mac, NetworkSpec};
use libfuzzer_sys::fuzz_target;

fn book() -> &'static AddressBook {
    static B: OnceLock<AddressBook> = OnceLock::new();
    B.get_or_init(|| {
        let net =
            NetworkSpec { name: "fuzz".into(), mode: "nat".into(), subnet: "10.9.0.0/24".into(), ..Default::default() }
                .validate(|| "lybr0".into())
                .expect("a valid network");
        let mut b = AddressBook::new(net);
        let port = Mac([0x52, 0x54, 0, 0, 0, 1]);
        b.reserve_fixed(port, None, 0).expect("room for a port");
        b.set_name(port, "vm1");
        b
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = answer(data, book(), data.len() % 2 == 0, 10);
});

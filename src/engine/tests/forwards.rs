//! Port forwards against the simulated kernel: what a forward costs (map
//! elements, never a rule), refusals and failures that change nothing,
//! restarts that plan nothing, and forwards going with their port and
//! network.

use super::*;
use crate::model::forwards::{PortForward, PortForwardSpec};

fn forward(proto: &str, host_port: u32, to: &str, to_port_number: Option<u32>) -> PortForwardSpec {
    PortForwardSpec { proto: proto.into(), host_port, to_port: to.into(), to_port_number, address: None }
}

fn set(r: &Rig, name: &str) -> Vec<String> {
    let k = r.kernel.snapshot();
    k.tables[&planner::table_id()].set(name).unwrap().elements.iter().map(ToString::to_string).collect()
}

/// The forwards as stored and as in memory.
fn forwards(r: &Rig) -> (Vec<PortForward>, Vec<PortForward>) {
    let mut stored: Vec<PortForward> = crate::store::load(r.store.as_ref(), crate::store::FORWARDS).unwrap();
    stored.sort();
    (stored, r.engine.forwards.clone())
}

#[test]
fn a_forward_costs_map_elements_and_goes_with_its_port() {
    let mut r = rig();
    r.engine.create_network(spec("a", "nat", "10.1.0.0/24")).unwrap();
    let web = r.engine.create_port(PortSpec { vm: "web1".into(), ..port("a") }).unwrap();
    let ip = web.ip.unwrap();
    r.kernel.clear_log();
    let shown = r.engine.add_forward("a", forward("tcp", 8080, "web1", Some(80))).unwrap();
    assert_eq!((shown.to_port.as_str(), shown.to_ip, shown.vm.as_str()), (web.id.as_str(), Some(ip), "web1"));
    assert_eq!(
        r.kernel.log(),
        [format!(
            "firewall add element {{ 10.1.0.0/24 . {ip}/32 }} in @fwd_hairpin; add element {{ {ip} . tcp . 80 }} in \
             @fwd_targets; add element {{ 0.0.0.0/0 . tcp . 8080 : {ip} . 80 }} in @port_fwd"
        )],
        "a forward: three elements in one transaction, nothing else"
    );
    // A second host port to the same guest port shares two of them.
    r.kernel.clear_log();
    r.engine.add_forward("a", forward("tcp", 8081, &web.id, Some(80))).unwrap();
    assert_eq!(r.kernel.log(), [format!("firewall add element {{ 0.0.0.0/0 . tcp . 8081 : {ip} . 80 }} in @port_fwd")]);
    // Stop and start: the elements go and come back.
    r.engine.set_active("a", false).unwrap();
    r.engine.set_active("a", true).unwrap();
    assert_eq!(set(&r, "port_fwd").len(), 2);
    // A restart finds the kernel as it should be and changes nothing.
    r.kernel.clear_log();
    let again = r.restarted(2000).unwrap();
    assert!(r.kernel.log().is_empty(), "a restart changed the kernel: {:?}", r.kernel.log());
    assert_eq!(again.forwards, r.engine.forwards);
    // Deleting one keeps what the other still needs.
    r.kernel.clear_log();
    r.engine.delete_forward("a", "tcp", "8080", None).unwrap();
    assert_eq!(
        r.kernel.log(),
        [format!("firewall delete element {{ 0.0.0.0/0 . tcp . 8080 : {ip} . 80 }} in @port_fwd")]
    );
    assert_eq!(set(&r, "fwd_targets"), [format!("{ip} . tcp . 80")]);
    // The port's deletion takes its forwards, in the kernel, the store
    // and memory.
    r.engine.delete_port(&web.id).unwrap();
    assert!(set(&r, "port_fwd").is_empty() && set(&r, "fwd_targets").is_empty() && set(&r, "fwd_hairpin").is_empty());
    assert_eq!(forwards(&r), (Vec::new(), Vec::new()));
    assert!(r.engine.forwards("a").unwrap().is_empty());
}

#[test]
fn refusals_and_failures_change_nothing() {
    let mut r = rig();
    r.engine.create_network(spec("a", "nat", "10.1.0.0/24")).unwrap();
    r.engine.create_network(spec("b", "route", "10.2.0.0/24")).unwrap();
    r.engine.create_network(spec("h", "host-only", "10.3.0.0/24")).unwrap();
    let web = r.engine.create_port(PortSpec { vm: "web1".into(), ..port("a") }).unwrap();
    r.engine.create_port(PortSpec { vm: "db".into(), ..port("b") }).unwrap();
    r.engine.create_port(PortSpec { vm: "h1".into(), ..port("h") }).unwrap();
    r.engine.add_forward("a", forward("tcp", 8080, "web1", Some(80))).unwrap();
    let before = (r.world(), forwards(&r));
    let refused = |r: &mut Rig, net: &str, spec: PortForwardSpec| {
        let e = r.engine.add_forward(net, spec.clone()).unwrap_err();
        assert_eq!((r.world(), forwards(r)), before, "{spec:?} left traces");
        e
    };
    let kind = |e: &EngineError| format!("{e:?}").split('(').next().unwrap().to_string();
    for (net, spec, want, text) in [
        ("b", forward("tcp", 8080, "db", None), "Conflict", "already forwarded"),
        (
            "b",
            PortForwardSpec { address: Some("192.0.2.1".into()), ..forward("tcp", 8080, "db", None) },
            "Conflict",
            "already forwarded",
        ),
        ("a", forward("tcp", 9000, "nobody", None), "NotFound", "no port or VM"),
        ("a", forward("tcp", 9000, "db", None), "NotFound", "no port or VM"),
        ("h", forward("tcp", 9000, "h1", None), "Invalid", "nat and route"),
        ("a", forward("udp", 53, "web1", None), "Conflict", "DNS"),
        ("a", forward("tcp", 0, "web1", None), "Invalid", "1 to 65535"),
        ("a", forward("icmp", 80, "web1", None), "Invalid", "tcp or udp"),
        ("nope", forward("tcp", 9000, "web1", None), "NotFound", "nope"),
    ] {
        let e = refused(&mut r, net, spec.clone());
        assert_eq!(kind(&e), want, "{spec:?}: {e}");
        assert!(e.to_string().contains(text), "{spec:?}: {e}");
    }
    // The same port on another address, or UDP: fine (and a route network takes them).
    r.engine.add_forward("b", forward("udp", 8080, "db", None)).unwrap();
    // Deleting what is not there.
    assert!(matches!(r.engine.delete_forward("a", "tcp", "9999", None), Err(EngineError::NotFound(_))));
    assert!(matches!(r.engine.delete_forward("a", "sctp", "80", None), Err(EngineError::Invalid(_))));
    assert!(matches!(r.engine.delete_forward("a", "tcp", "x", None), Err(EngineError::Invalid(_))));
    // A kernel or store failure leaves no trace, for an addition and a deletion.
    let before = (r.world(), forwards(&r));
    r.refuses_cleanly("firewall add element *", |e| e.add_forward("a", forward("tcp", 8443, &web.id, Some(443))));
    r.refuses_cleanly("firewall delete element *", |e| e.delete_forward("a", "tcp", "8080", None));
    assert_eq!((r.world(), forwards(&r)), before);
    // The network's deletion takes its forwards.
    r.engine.delete_network("a").unwrap();
    assert!(forwards(&r).0.iter().all(|f| f.net != "a") && forwards(&r).1.iter().all(|f| f.net != "a"));
    assert_eq!(set(&r, "port_fwd").len(), 1, "the route network's UDP forward stays");
}

/// A forward written through another host (a cluster member) is followed:
/// the watch's change makes this engine read the forwards again and put
/// the elements in its kernel; its deletion takes them out.
#[test]
fn a_forward_made_through_another_host_is_followed() {
    use crate::store::{Change, DocumentChange, FORWARDS};
    let mut r = rig();
    r.engine.create_network(spec("a", "nat", "10.1.0.0/24")).unwrap();
    let web = r.engine.create_port(PortSpec { vm: "web1".into(), ..port("a") }).unwrap();
    let f = PortForward {
        net: "a".into(),
        proto: crate::model::forwards::Proto::Tcp,
        host_port: 8080,
        address: None,
        to_port: web.id.clone(),
        to_port_number: 80,
    };
    let body = serde_json::to_string(&f).unwrap();
    r.store.write_documents(&[DocumentChange::put(FORWARDS, f.doc_key(), &f)]).unwrap();
    let change = Change::Document { kind: FORWARDS.into(), key: f.doc_key(), body: Some(body) };
    assert!(!r.engine.holds(&change));
    assert!(r.engine.follow(std::slice::from_ref(&change), false).unwrap());
    assert!(r.engine.holds(&change));
    assert_eq!(set(&r, "port_fwd"), [format!("0.0.0.0/0 . tcp . 8080 : {} . 80", web.ip.unwrap())]);
    r.store.write_documents(&[DocumentChange::delete(FORWARDS, f.doc_key())]).unwrap();
    let gone = Change::Document { kind: FORWARDS.into(), key: f.doc_key(), body: None };
    assert!(r.engine.follow(&[gone], false).unwrap());
    assert!(set(&r, "port_fwd").is_empty() && r.engine.forwards("a").unwrap().is_empty());
}

/// Host ports are shared by every project: another project's forward of
/// the same port refuses a new one without naming its network or port.
#[test]
fn another_projects_forward_is_not_named() {
    use crate::model::ProjectSpec;
    let mut r = rig();
    r.engine.create_network(spec("a", "nat", "10.1.0.0/24")).unwrap();
    let web = r.engine.create_port(PortSpec { vm: "web1".into(), ..port("a") }).unwrap();
    r.engine.add_forward("a", forward("tcp", 8080, "web1", None)).unwrap();
    r.engine.create_project(ProjectSpec { name: "red".into(), description: None }).unwrap();
    r.engine.create_network(NetworkSpec { project: Some("red".into()), ..spec("b", "nat", "10.2.0.0/24") }).unwrap();
    let key = r.engine.network_key("red", "b").unwrap();
    r.engine.create_port(PortSpec { vm: "db".into(), project: Some("red".into()), ..port("b") }).unwrap();
    let e = r.engine.add_forward(&key, forward("tcp", 8080, "db", None)).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, EngineError::Conflict(_)) && text.contains("by another project"), "{text}");
    assert!(!text.contains(&web.id) && !text.contains("\"a\""), "{text}");
    // Within one project the message names the forward's port.
    let e = r.engine.add_forward("a", forward("tcp", 8080, "web1", Some(81))).unwrap_err();
    assert!(e.to_string().contains(&web.id), "{e}");
}

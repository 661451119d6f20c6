//! One set of store tests, run against every [`Store`]: the SQLite store
//! (in memory) and the etcd store (a real `etcd` started for the test on
//! loopback with a throw-away data directory, killed by pid afterwards).
//!
//! Without an `etcd` binary the etcd runs print why and pass, unless
//! `LANYARD_REQUIRE_PRIVILEGED=1` (CI), which makes that a failure.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::etcd::EtcdStore;
use super::sqlite::SqliteStore;
use super::{LeaseChange, Store, StoreError};
use crate::auth::Token;
use crate::model::{Lease, LeaseKind, Mac, Network, Port, Project};

/// An `etcd` for one test: loopback ports of its own, a data directory
/// removed afterwards, killed (by its pid) on drop, also when the test panics.
pub(crate) struct EtcdServer {
    child: Child,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

impl EtcdServer {
    /// Starts etcd, or says why not and returns None (a failure instead
    /// when `LANYARD_REQUIRE_PRIVILEGED=1`).
    pub(crate) fn start(test: &str) -> Option<EtcdServer> {
        let Some(bin) = etcd_binary() else {
            let require = std::env::var("LANYARD_REQUIRE_PRIVILEGED").map(|v| v == "1").unwrap_or(false);
            assert!(!require, "{test} needs etcd (scripts/setup installs etcd-server), and LANYARD_REQUIRE_PRIVILEGED=1 forbids skipping it");
            eprintln!("skipping {test}: needs etcd (scripts/setup installs etcd-server)");
            return None;
        };
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("lanyard-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd data dir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}"), "--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let server = EtcdServer { child, dir, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen on {}: {}", server.url, server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// A store on this etcd with keys under `root`.
    pub(crate) fn store(&self, root: &str) -> EtcdStore {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdStore::connect_at(std::slice::from_ref(&self.url), root) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot use etcd at {}: {e}\n{}", self.url, self.log()),
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn net(name: &str, project: &str) -> Network {
    let mut n = crate::model::test_network(name, "192.168.122.0/24", "lybr0");
    n.project = project.into();
    n.gateway_mac = Some(Mac([0x02, 0x4c, 0x59, 0, 0, 1]));
    n
}

fn port(id: &str, net: &str, mac: u8, ip: &str) -> Port {
    Port {
        vm: format!("vm-{id}"),
        mac: Mac([0x52, 0x54, 0, 0, 1, mac]),
        ip: Some(ip.parse().expect("ip")),
        ..crate::model::test_port(id, net)
    }
}

fn lease(net: &str, ip: &str, mac: u8) -> Lease {
    Lease {
        net: net.into(),
        expiry: 100,
        mac: Mac([0x52, 0x54, 0, 0, 1, mac]),
        ip: ip.parse().expect("ip"),
        hostname: Some("h".into()),
        client_id: None,
        kind: LeaseKind::Dynamic,
    }
}

fn token(id: &str, project: &str, created: u64) -> Token {
    Token { id: id.into(), project: project.into(), name: format!("l-{id}"), hash: format!("hash-{id}"), created }
}

fn names(store: &dyn Store) -> Vec<String> {
    store.networks().expect("networks").iter().map(|n| n.key().into_owned()).collect()
}

/// What every store does, in one body.
fn contract(s: &dyn Store) {
    // A new store has the default project and nothing else.
    assert_eq!(s.projects().unwrap().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["default"]);
    assert!(s.networks().unwrap().is_empty() && s.ports().unwrap().is_empty() && s.leases().unwrap().is_empty());

    // Settings.
    assert_eq!(s.setting("vlan").unwrap(), None);
    s.put_setting("vlan", r#"{"a":1}"#).unwrap();
    s.put_setting("vlan", r#"{"a":2}"#).unwrap();
    assert_eq!(s.setting("vlan").unwrap().as_deref(), Some(r#"{"a":2}"#));

    // Projects: upsert, list by name.
    s.put_project(&Project { name: "blue".into(), description: "b".into(), created: 5 }).unwrap();
    s.put_project(&Project { name: "blue".into(), description: "again".into(), created: 5 }).unwrap();
    s.put_project(&Project { name: "azure".into(), description: String::new(), created: 6 }).unwrap();
    let projects = s.projects().unwrap();
    assert_eq!(projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["azure", "blue", "default"]);
    assert_eq!(projects[1].description, "again");

    // Tokens: unique ids and hashes, listed by project then creation, and
    // a project's tokens go with it.
    s.put_token(&token("t2", "blue", 9)).unwrap();
    s.put_token(&token("t1", "blue", 7)).unwrap();
    s.put_token(&token("t3", "default", 1)).unwrap();
    assert!(s.put_token(&Token { id: "t4".into(), ..token("t1", "blue", 7) }).is_err(), "hashes are unique");
    assert!(s.put_token(&Token { hash: "other".into(), ..token("t1", "blue", 7) }).is_err(), "ids are unique");
    assert_eq!(s.tokens().unwrap(), vec![token("t1", "blue", 7), token("t2", "blue", 9), token("t3", "default", 1)]);
    assert_eq!(s.token_by_hash("hash-t2").unwrap(), Some(token("t2", "blue", 9)));
    assert_eq!(s.token_by_hash("nope").unwrap(), None);
    s.delete_project("blue").unwrap();
    assert_eq!(s.tokens().unwrap(), vec![token("t3", "default", 1)], "blue's tokens went with it");
    assert_eq!(s.token_by_hash("hash-t1").unwrap(), None);
    assert_eq!(s.projects().unwrap().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["azure", "default"]);
    assert!(s.delete_token("t3").unwrap());
    assert!(!s.delete_token("t3").unwrap());
    assert!(s.tokens().unwrap().is_empty());
    s.put_token(&token("t5", "default", 2)).unwrap();
    assert_eq!(s.token_by_hash("hash-t5").unwrap(), Some(token("t5", "default", 2)), "a deleted hash is free");

    // Networks: by key, the same name in two projects, and a name that is
    // also a project prefix ("azure" in default beside "azure/web").
    s.put_network(&net("web", "azure")).unwrap();
    s.put_network(&net("azure", "default")).unwrap();
    s.put_network(&net("default", "default")).unwrap();
    let mut changed = net("default", "default");
    changed.mtu = Some(1400);
    s.put_network(&changed).unwrap();
    assert_eq!(names(s), ["azure", "azure/web", "default"]);
    assert_eq!(s.networks().unwrap()[2], changed, "a network round-trips");

    // Ports: in the order they were first written, an update in place.
    // (Within one batch the order is the store's own: etcd gives a batch
    // one revision, so there it is by id.)
    let a = port("00aa", "azure", 1, "192.168.122.2");
    let b = port("00bb", "azure/web", 2, "192.168.122.2");
    let c = port("00cc", "azure", 3, "192.168.122.3");
    s.put_ports(std::slice::from_ref(&c)).unwrap();
    s.put_ports(&[a.clone(), b.clone()]).unwrap();
    let c2 = Port { vm: "renamed".into(), ..c.clone() };
    s.put_ports(std::slice::from_ref(&c2)).unwrap();
    assert_eq!(s.ports().unwrap(), vec![c2.clone(), a.clone(), b.clone()]);

    // Ports claim their fixed IP (per network) and MAC (across networks)
    // with their write: another port's value refuses the whole call.
    let e = s
        .put_ports(&[
            port("00ff", "azure", 10, "192.168.122.10"),
            Port { mac: a.mac, ..port("00ee", "azure/web", 9, "192.168.122.9") },
        ])
        .expect_err("a's MAC");
    assert!(
        matches!(&e, StoreError::Claimed { kind, value, holder } if kind == "mac" && *value == a.mac.to_string() && holder == "00aa"),
        "{e:?}"
    );
    let e = s.put_ports(&[port("00ee", "azure/web", 9, "192.168.122.2")]).expect_err("b's IP");
    assert!(matches!(&e, StoreError::Claimed { kind, holder, .. } if kind == "ip" && holder == "00bb"), "{e:?}");
    assert_eq!(s.ports().unwrap().len(), 3, "nothing of a refused call was written");
    let held = |s: &dyn Store, kind: &str| -> Vec<(String, String)> {
        s.claims(kind).unwrap().into_iter().map(|c| (c.value, c.owner)).collect()
    };
    let pair = |v: &str, o: &str| (v.to_string(), o.to_string());
    assert_eq!(
        held(s, "ip"),
        [
            pair("azure/192.168.122.2", "00aa"),
            pair("azure/192.168.122.3", "00cc"),
            pair("azure/web/192.168.122.2", "00bb")
        ]
    );
    assert_eq!(held(s, "mac").iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>(), ["00aa", "00bb", "00cc"]);

    // Leases: one per address and one per client (MAC) in a network.
    s.write_leases(&[
        LeaseChange::Upsert(lease("azure", "192.168.122.50", 9)),
        LeaseChange::Upsert(lease("azure", "192.168.122.51", 9)),
        LeaseChange::Upsert(lease("azure", "192.168.122.51", 8)),
        LeaseChange::Upsert(lease("azure/web", "192.168.122.51", 8)),
        LeaseChange::Upsert(lease("azure/web", "192.168.122.9", 7)),
        LeaseChange::Upsert(lease("azure/web", "192.168.122.10", 6)),
    ])
    .unwrap();
    assert_eq!(
        s.leases().unwrap(),
        vec![
            lease("azure", "192.168.122.51", 8),
            lease("azure/web", "192.168.122.10", 6),
            lease("azure/web", "192.168.122.51", 8),
            lease("azure/web", "192.168.122.9", 7),
        ],
        "by network, then address as text"
    );
    s.write_leases(&[LeaseChange::Remove { net: "azure/web".into(), ip: "192.168.122.9".parse().unwrap() }]).unwrap();
    s.write_leases(&[]).unwrap();
    assert_eq!(s.leases().unwrap().len(), 3);

    // A port's delete takes its lease (by MAC) in its network only.
    s.write_leases(&[LeaseChange::Upsert(Lease { kind: LeaseKind::Static, ..lease("azure", "192.168.122.2", 1) })])
        .unwrap();
    s.write_leases(&[LeaseChange::Upsert(lease("azure/web", "192.168.122.60", 1))]).unwrap();
    s.delete_port(&a).unwrap();
    assert_eq!(s.ports().unwrap(), vec![c2.clone(), b.clone()]);
    let left: Vec<(String, Ipv4Addr)> = s.leases().unwrap().into_iter().map(|l| (l.net, l.ip)).collect();
    assert!(!left.contains(&("azure".into(), "192.168.122.2".parse().unwrap())), "{left:?}");
    assert!(left.contains(&("azure/web".into(), "192.168.122.60".parse().unwrap())), "{left:?}");
    assert!(!held(s, "ip").iter().chain(&held(s, "mac")).any(|(_, o)| o == "00aa"), "a's claims went with it");
    let e = Port { mac: a.mac, ..port("00ee", "azure/web", 9, "192.168.122.9") };
    s.put_ports(std::slice::from_ref(&e)).expect("a's MAC is free again");
    s.delete_port(&e).unwrap();

    // release_port keeps the lease its guest still holds, as a dynamic one.
    s.write_leases(&[LeaseChange::Upsert(Lease { kind: LeaseKind::Static, ..lease("azure", "192.168.122.3", 3) })])
        .unwrap();
    let hold = lease("azure", "192.168.122.3", 3);
    s.release_port(&c2, Some(&hold)).unwrap();
    assert_eq!(s.ports().unwrap(), vec![b.clone()]);
    assert!(s.leases().unwrap().contains(&hold));

    // delete_network cascades to its ports and leases, and only its own:
    // "azure" is a prefix of "azure/web" in more than one sense.
    let d = port("00dd", "azure", 4, "192.168.122.4");
    s.put_ports(std::slice::from_ref(&d)).unwrap();
    s.delete_network("azure").unwrap();
    assert_eq!(names(s), ["azure/web", "default"]);
    assert_eq!(s.ports().unwrap(), vec![b.clone()]);
    assert!(s.leases().unwrap().iter().all(|l| l.net == "azure/web"), "{:?}", s.leases().unwrap());
    assert!(!s.leases().unwrap().is_empty());
    s.delete_network("azure/web").unwrap();
    s.delete_network("nonexistent").unwrap();
    assert_eq!(names(s), ["default"]);
    assert!(s.ports().unwrap().is_empty() && s.leases().unwrap().is_empty());
    assert_eq!((held(s, "ip"), held(s, "mac")), (vec![], vec![]), "claims went with the networks");

    // The start-up backfill: what is free is claimed, what another holds is
    // left to it and reported.
    use super::Claim;
    let claim = |v: &str, o: &str| Claim { kind: "mac".into(), value: v.into(), owner: o.into() };
    assert!(s.claim("mac", "m1", "p1").unwrap());
    let taken = s.claim_many(&[claim("m1", "p2"), claim("m2", "p2"), claim("m1", "p1")]).unwrap();
    assert_eq!(taken, [claim("m1", "p2")]);
    assert_eq!(held(s, "mac"), [pair("m1", "p1"), pair("m2", "p2")]);
    assert!(s.release_claim("mac", "m1", "p1").unwrap() && s.release_claim("mac", "m2", "p2").unwrap());

    // Claims: the first owner wins, a repeat by it is still its, only the
    // holder releases, and a released value is free again. Values may hold
    // slashes (`NET/IP`), kinds are apart.
    assert!(s.claim("ip", "azure/web/192.168.122.2", "host-a").unwrap());
    assert!(s.claim("ip", "azure/web/192.168.122.2", "host-a").unwrap());
    assert!(!s.claim("ip", "azure/web/192.168.122.2", "host-b").unwrap());
    assert!(s.claim("ip", "azure/192.168.122.2", "host-b").unwrap(), "another network's address");
    assert!(s.claim("mac", "azure/web/192.168.122.2", "host-b").unwrap(), "another kind");
    assert!(!s.release_claim("ip", "azure/web/192.168.122.2", "host-b").unwrap());
    assert!(!s.claim("ip", "azure/web/192.168.122.2", "host-b").unwrap(), "still host-a's");
    assert!(s.release_claim("ip", "azure/web/192.168.122.2", "host-a").unwrap());
    assert!(!s.release_claim("ip", "azure/web/192.168.122.2", "host-a").unwrap());
    assert!(s.claim("ip", "azure/web/192.168.122.2", "host-b").unwrap());

    // Documents: by kind and key (keys may hold '/' and '%'), in one
    // transaction per call, a put replacing, a delete of nothing harmless.
    use super::DocumentChange;
    let put = |kind, key: &str, body: &str| DocumentChange::Put { kind, key: key.into(), body: body.into() };
    s.write_documents(&[put("grants", "a>b/c>all", "1"), put("grants", "a%2Fb", "2"), put("fip-pools", "p", "3")])
        .unwrap();
    s.write_documents(&[put("grants", "a>b/c>all", "4"), DocumentChange::delete("fip-pools", "nosuch")]).unwrap();
    assert_eq!(
        s.documents("grants").unwrap(),
        [("a%2Fb".to_string(), "2".to_string()), ("a>b/c>all".to_string(), "4".to_string())]
    );
    assert_eq!(s.documents("fip-pools").unwrap(), [("p".to_string(), "3".to_string())]);
    s.write_documents(&[DocumentChange::delete("grants", "a>b/c>all"), DocumentChange::delete("fip-pools", "p")])
        .unwrap();
    assert_eq!(s.documents("grants").unwrap().len(), 1);
    assert!(s.documents("fip-pools").unwrap().is_empty() && s.documents("nosuch").unwrap().is_empty());
    // A port forward's key: a network key with its '/', and '*' for every
    // address; the record decodes as it was written.
    let f = crate::model::forwards::PortForward {
        net: "team/web".into(),
        proto: crate::model::forwards::Proto::Udp,
        host_port: 5353,
        address: None,
        to_port: "1a2b3c4d".into(),
        to_port_number: 53,
    };
    s.write_documents(&[DocumentChange::put(super::FORWARDS, f.doc_key(), &f)]).unwrap();
    assert_eq!(s.documents(super::FORWARDS).unwrap()[0].0, "team/web/udp/*/5353");
    let back: Vec<crate::model::forwards::PortForward> = super::load(s, super::FORWARDS).unwrap();
    assert_eq!(back, std::slice::from_ref(&f));
    s.write_documents(&[DocumentChange::delete(super::FORWARDS, f.doc_key())]).unwrap();
    assert!(s.documents(super::FORWARDS).unwrap().is_empty());
}

/// A DHCP group commit beyond one etcd transaction's default limit (128
/// operations) is still written whole: 600 lease changes; a batch of 40
/// ports (120 operations with their claims) is one call.
fn large_batches(s: &dyn Store) {
    s.put_network(&net("big", "default")).unwrap();
    let ports: Vec<Port> = (0..40u8)
        .map(|i| Port {
            mac: Mac([0x52, 0x54, 0, 2, 0, i]),
            ..port(&format!("p{i:03}"), "big", 0, &format!("10.1.0.{}", i + 1))
        })
        .collect();
    s.put_ports(&ports).unwrap();
    assert_eq!(s.ports().unwrap(), ports);
    let changes: Vec<LeaseChange> = (0..600u16)
        .map(|i| {
            let l = lease("big", &format!("10.2.{}.{}", i / 250, i % 250 + 1), 0);
            LeaseChange::Upsert(Lease { mac: Mac([0x52, 0x54, 0, 3, (i >> 8) as u8, i as u8]), ..l })
        })
        .collect();
    s.write_leases(&changes).unwrap();
    assert_eq!(s.leases().unwrap().len(), 600);
    s.delete_network("big").unwrap();
    assert!(s.ports().unwrap().is_empty() && s.leases().unwrap().is_empty());
}

#[test]
fn sqlite_takes_large_batches() {
    large_batches(&SqliteStore::in_memory().unwrap());
}

#[test]
fn etcd_takes_large_batches() {
    let Some(etcd) = EtcdServer::start("etcd_takes_large_batches") else { return };
    let s = etcd.store("/lanyard-test/large");
    large_batches(&s);
    // A port batch must stay one transaction (create-batch is all or
    // nothing): beyond etcd's limit it is refused whole, with the way out.
    let ports: Vec<Port> = (0..200u8)
        .map(|i| Port { mac: Mac([0x52, 0x54, 0, 4, 0, i]), ..port(&format!("q{i:03}"), "big", 0, "10.3.0.1") })
        .collect();
    let e = s.put_ports(&ports).expect_err("beyond --max-txn-ops").to_string();
    assert!(e.contains("--max-txn-ops") && !e.contains('\n'), "{e}");
    assert!(s.ports().unwrap().is_empty(), "nothing of the refused batch was written");
}

/// `hosts` (stores on one state, each a host) race with `threads` threads
/// each to claim the same 200 values: every value is won exactly once.
fn claims_race(hosts: &[Arc<dyn Store>], threads: usize) {
    const VALUES: usize = 200;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = hosts[t % hosts.len()].clone();
            std::thread::spawn(move || {
                // Each thread walks the values from its own starting point,
                // so threads meet on every value at different moments.
                (0..VALUES)
                    .map(|i| (i + t * 37) % VALUES)
                    .filter(|&v| {
                        store
                            .claim(
                                "mac",
                                &format!("52:54:00:00:{:02x}:{:02x}", v / 256, v % 256),
                                &format!("owner-{t}"),
                            )
                            .expect("claim")
                    })
                    .collect::<Vec<usize>>()
            })
        })
        .collect();
    let mut won = vec![0usize; VALUES];
    for w in workers {
        for v in w.join().expect("a claiming thread panicked") {
            won[v] += 1;
        }
    }
    let wrong: Vec<(usize, usize)> = won.iter().copied().enumerate().filter(|&(_, n)| n != 1).collect();
    assert!(wrong.is_empty(), "values not won exactly once (value, winners): {wrong:?}");
}

#[test]
fn sqlite_claims_are_won_exactly_once() {
    let s: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    claims_race(&[s], 8);
}

#[test]
fn etcd_claims_are_won_exactly_once_across_hosts() {
    let Some(etcd) = EtcdServer::start("etcd_claims_are_won_exactly_once_across_hosts") else { return };
    // Two clients, two "hosts", four threads each.
    let a: Arc<dyn Store> = Arc::new(etcd.store("/lanyard-test/race"));
    let b: Arc<dyn Store> = Arc::new(etcd.store("/lanyard-test/race"));
    claims_race(&[a, b], 8);
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    contract(&SqliteStore::in_memory().unwrap());
}

#[test]
fn the_etcd_store_keeps_the_contract() {
    let Some(etcd) = EtcdServer::start("the_etcd_store_keeps_the_contract") else { return };
    contract(&etcd.store("/lanyard-test/contract"));
    // A second store on the same keys sees the same state (it is etcd's,
    // not the client's), and connecting again keeps the default project.
    let again = etcd.store("/lanyard-test/contract");
    assert_eq!(again.setting("vlan").unwrap().as_deref(), Some(r#"{"a":2}"#));
    assert_eq!(again.projects().unwrap().len(), 2);
}

#[test]
fn an_unreachable_etcd_refuses_writes_with_a_clear_error() {
    let Some(etcd) = EtcdServer::start("an_unreachable_etcd_refuses_writes_with_a_clear_error") else { return };
    let store = Arc::new(etcd.store("/lanyard-test/down"));
    let url = etcd.url.clone();
    drop(etcd);
    let started = Instant::now();
    let e = store.put_network(&net("web", "default")).expect_err("etcd is gone");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&url) && text.contains("unreachable") && text.contains("refused"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(15), "bounded by the call timeout: {:?}", started.elapsed());
    // From inside an async runtime too (the daemon's), without panicking.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let s = store.clone();
    let e = rt.block_on(async move { s.networks() }).expect_err("etcd is gone");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    drop(rt);
    drop(store);
}

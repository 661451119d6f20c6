//! Reading a set's or map's elements from nftables JSON (`list set` /
//! `list map` with JSON output) into typed [`Element`]s, guided by the
//! set's declared key and data types.
//!
//! The shapes nft 1.0.6 prints, per component:
//! - a string: an interface name, an IPv4 address or an Ethernet address
//!   (which one the declared type says);
//! - a number: a port or a mark;
//! - `{"prefix": {"addr": A, "len": N}}` and `{"range": [A, B]}` in
//!   interval sets;
//! - `{"concat": [..]}` for concatenated types, e.g. `"lybr0" .
//!   192.168.122.0/24` is `{"concat": ["lybr0", {"prefix": ..}]}`;
//! - `[key, data]` for a map element;
//! - `{"elem": {"val": X, ..}}` around any of these when the element carries
//!   a timeout, a comment or a counter.
//!
//! In an interval set an address is a prefix: nft prints a /32 as a bare
//! address and a range that is a prefix as the prefix, so both are read
//! back as [`Value::Net`], the form the planner writes. Anything else is an
//! error that names the value: the driver never guesses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value as Json;

use crate::kernel::firewall::{DataType, Proto, Value};
use crate::kernel::{Element, Set};
use crate::model::Mac;

/// The elements of `set` in the JSON output of `list set`/`list map`.
pub fn parse_listing(json: &str, set: &Set) -> Result<BTreeSet<Element>, String> {
    let root: Json = serde_json::from_str(json).map_err(|e| format!("nft printed invalid JSON: {e}"))?;
    let items = root.get("nftables").and_then(Json::as_array).ok_or("nft's JSON has no \"nftables\" list")?;
    let kind = if set.data.is_empty() { "set" } else { "map" };
    let listed = items
        .iter()
        .filter_map(|item| item.get(kind))
        .find(|s| s.get("name").and_then(Json::as_str) == Some(set.name.as_str()))
        .ok_or_else(|| format!("nft listed no {kind} named {}", set.name))?;
    let Some(elements) = listed.get("elem") else { return Ok(BTreeSet::new()) };
    let elements = elements.as_array().ok_or_else(|| format!("\"elem\" is not a list: {}", short(elements)))?;
    elements.iter().map(|e| parse_element(e, set)).collect()
}

/// One element of `set`.
pub fn parse_element(json: &Json, set: &Set) -> Result<Element, String> {
    let json = unwrap_elem(json);
    if set.data.is_empty() {
        return Ok(Element::key(parse_values(json, &set.key, set.interval)?));
    }
    let pair = json.as_array().filter(|a| a.len() == 2).ok_or_else(|| format!("not a map element: {}", short(json)))?;
    Ok(Element {
        key: parse_values(unwrap_elem(&pair[0]), &set.key, set.interval)?,
        // Interval applies to keys; a map's data is read as it is printed.
        data: parse_values(&pair[1], &set.data, false)?,
    })
}

/// `{"elem": {"val": X, "timeout": ..}}` is X with extras lanyard does not
/// use.
fn unwrap_elem(json: &Json) -> &Json {
    json.get("elem").and_then(|e| e.get("val")).unwrap_or(json)
}

fn parse_values(json: &Json, types: &[DataType], interval: bool) -> Result<Vec<Value>, String> {
    match (types, json.get("concat")) {
        ([ty], None) => Ok(vec![parse_value(json, *ty, interval)?]),
        (_, Some(parts)) => {
            let parts = parts
                .as_array()
                .filter(|p| p.len() == types.len())
                .ok_or_else(|| format!("expected {} concatenated values: {}", types.len(), short(json)))?;
            parts.iter().zip(types).map(|(p, ty)| parse_value(p, *ty, interval)).collect()
        }
        _ => Err(format!("expected {} concatenated values: {}", types.len(), short(json))),
    }
}

fn parse_value(json: &Json, ty: DataType, interval: bool) -> Result<Value, String> {
    let bad = || format!("not a {}: {}", type_name(ty), short(json));
    match ty {
        DataType::Ifname => json.as_str().map(|s| Value::Ifname(s.to_string())).ok_or_else(bad),
        DataType::Ipv4Addr => parse_ipv4(json, interval).ok_or_else(bad),
        DataType::EtherAddr => json.as_str().and_then(parse_mac).map(Value::Mac).ok_or_else(bad),
        DataType::InetService => number(json).and_then(|n| u16::try_from(n).ok()).map(Value::Port).ok_or_else(bad),
        DataType::Mark => number(json).and_then(|n| u32::try_from(n).ok()).map(Value::Num).ok_or_else(bad),
        DataType::InetProto => {
            let text = json.as_str().map(String::from).or_else(|| json.as_u64().map(|n| n.to_string()));
            text.as_deref().and_then(Proto::parse).map(Value::Proto).ok_or_else(bad)
        }
    }
}

fn parse_ipv4(json: &Json, interval: bool) -> Option<Value> {
    if let Some(s) = json.as_str() {
        let ip: Ipv4Addr = s.parse().ok()?;
        return Some(if interval { Value::Net(Ipv4Net::new(ip, 32).ok()?) } else { Value::Ip(ip) });
    }
    if let Some(p) = json.get("prefix") {
        let addr: Ipv4Addr = p.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
        return Some(Value::Net(Ipv4Net::new(addr, len).ok()?));
    }
    if let Some(r) = json.get("range") {
        let [first, last] = r.as_array()?.as_slice() else { return None };
        let first: Ipv4Addr = first.as_str()?.parse().ok()?;
        let last: Ipv4Addr = last.as_str()?.parse().ok()?;
        if first > last {
            return None;
        }
        return Some(range_value(first, last));
    }
    None
}

/// A range as a prefix when it is one, else as a range.
fn range_value(first: Ipv4Addr, last: Ipv4Addr) -> Value {
    let span = u32::from(last) - u32::from(first);
    // A prefix spans 2^k - 1 and starts on a multiple of 2^k.
    if span.wrapping_add(1) & span == 0 {
        let len = u8::try_from(span.count_zeros()).unwrap_or(32);
        if let Ok(net) = Ipv4Net::new(first, len) {
            if net.network() == first {
                return Value::Net(net);
            }
        }
    }
    Value::Range(first, last)
}

/// Six hex bytes separated by `:`. Unlike [`Mac`]'s parser for user input,
/// any address the kernel holds is accepted (multicast, all zeros).
fn parse_mac(s: &str) -> Option<Mac> {
    let mut bytes = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut bytes {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(bytes))
}

/// A JSON number, or a string of digits (nft prints some numbers that way).
fn number(json: &Json) -> Option<u64> {
    json.as_u64().or_else(|| json.as_str().and_then(|s| s.parse().ok()))
}

fn type_name(ty: DataType) -> &'static str {
    match ty {
        DataType::Ifname => "interface name",
        DataType::Ipv4Addr => "IPv4 address",
        DataType::EtherAddr => "Ethernet address",
        DataType::InetService => "port",
        DataType::Mark => "mark",
        DataType::InetProto => "transport protocol",
    }
}

/// The JSON text of a value, cut to a length an error line can carry.
fn short(json: &Json) -> String {
    let mut text = json.to_string();
    if text.len() > 120 {
        let mut end = 117;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::{EtherAddr, Ifname, InetService, Ipv4Addr as Ip4, Mark};

    fn listing(kind: &str, name: &str, elem: &str) -> String {
        format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
            {{"{kind}": {{"family": "inet", "name": "{name}", "table": "lanyard", "handle": 2, "elem": {elem}}}}}]}}"#
        )
    }

    fn read(set: &Set, elem: &str) -> Result<Vec<Element>, String> {
        let kind = if set.data.is_empty() { "set" } else { "map" };
        parse_listing(&listing(kind, &set.name, elem), set).map(|s| s.into_iter().collect())
    }

    fn net(s: &str) -> Value {
        Value::Net(s.parse().unwrap())
    }

    fn ip(s: &str) -> Value {
        Value::Ip(s.parse().unwrap())
    }

    fn ifname(s: &str) -> Value {
        Value::Ifname(s.into())
    }

    #[test]
    fn interface_names() {
        let set = Set::new("bridges", &[Ifname], false);
        assert_eq!(
            read(&set, r#"["lybr0", "lybr1"]"#).unwrap(),
            [Element::key(vec![ifname("lybr0")]), Element::key(vec![ifname("lybr1")])]
        );
    }

    #[test]
    fn addresses_prefixes_and_ranges() {
        let plain = Set::new("hosts", &[Ip4], false);
        assert_eq!(read(&plain, r#"["10.0.0.1"]"#).unwrap(), [Element::key(vec![ip("10.0.0.1")])]);
        let set = Set::new("masq_nets", &[Ip4], true);
        let got = read(
            &set,
            r#"[{"range": ["10.1.0.1", "10.1.0.9"]}, "10.2.0.7", {"prefix": {"addr": "192.168.122.0", "len": 24}},
                {"range": ["10.4.0.0", "10.4.0.255"]}, {"range": ["10.5.0.5", "10.5.0.5"]}]"#,
        )
        .unwrap();
        let want: BTreeSet<Element> = [
            Value::Range("10.1.0.1".parse().unwrap(), "10.1.0.9".parse().unwrap()),
            net("10.2.0.7/32"),
            net("192.168.122.0/24"),
            net("10.4.0.0/24"),
            net("10.5.0.5/32"),
        ]
        .into_iter()
        .map(|v| Element::key(vec![v]))
        .collect();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn concatenation_of_ifname_and_prefix() {
        let set = Set::new("nat_nets", &[Ifname, Ip4], true);
        let got = read(
            &set,
            r#"[{"concat": ["lybr0", {"prefix": {"addr": "192.168.122.0", "len": 24}}]},
                {"concat": ["lybr1", "10.0.0.5"]}]"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                Element::key(vec![ifname("lybr0"), net("192.168.122.0/24")]),
                Element::key(vec![ifname("lybr1"), net("10.0.0.5/32")]),
            ]
        );
        let pair = Set::new("same_bridge", &[Ifname, Ifname], false);
        assert_eq!(read(&pair, r#"[{"concat": ["a", "a"]}]"#).unwrap(), [Element::key(vec![ifname("a"), ifname("a")])]);
    }

    #[test]
    fn map_elements() {
        let map = Set::map("dnat", &[Ip4, InetService], &[Ip4], false);
        let got = read(&map, r#"[[{"concat": ["1.2.3.4", 80]}, "10.0.0.1"]]"#).unwrap();
        assert_eq!(got, [Element { key: vec![ip("1.2.3.4"), Value::Port(80)], data: vec![ip("10.0.0.1")] }]);
        let marks = Set::map("marks", &[Ifname], &[Mark], false);
        assert_eq!(
            read(&marks, r#"[["a", 5]]"#).unwrap(),
            [Element { key: vec![ifname("a")], data: vec![Value::Num(5)] }]
        );
        let interval = Set::map("routes", &[Ip4], &[Ip4], true);
        assert_eq!(
            read(&interval, r#"[[{"prefix": {"addr": "10.0.0.0", "len": 8}}, "1.1.1.1"]]"#).unwrap(),
            [Element { key: vec![net("10.0.0.0/8")], data: vec![ip("1.1.1.1")] }]
        );
    }

    #[test]
    fn macs_ports_and_wrapped_elements() {
        let macs = Set::new("macs", &[EtherAddr], false);
        assert_eq!(
            read(&macs, r#"["01:00:5e:00:00:01"]"#).unwrap(),
            [Element::key(vec![Value::Mac(Mac([1, 0, 0x5e, 0, 0, 1]))])]
        );
        let ports = Set::new("ports", &[InetService], false);
        assert_eq!(read(&ports, "[53]").unwrap(), [Element::key(vec![Value::Port(53)])]);
        let timed = Set::new("t", &[Ip4], true);
        assert_eq!(
            read(
                &timed,
                r#"[{"elem": {"val": {"prefix": {"addr": "1.1.1.0", "len": 24}}, "timeout": 1800, "comment": "hi"}}]"#
            )
            .unwrap(),
            [Element::key(vec![net("1.1.1.0/24")])]
        );
    }

    #[test]
    fn a_set_without_elements_is_empty() {
        let set = Set::new("isolated", &[Ifname], false);
        let json =
            r#"{"nftables": [{"set": {"family": "inet", "name": "isolated", "table": "lanyard", "type": "ifname"}}]}"#;
        assert!(parse_listing(json, &set).unwrap().is_empty());
    }

    #[test]
    fn what_cannot_be_read_is_an_error_naming_it() {
        let nat = Set::new("nat_nets", &[Ifname, Ip4], true);
        for (elem, names) in [
            (r#"["lybr0"]"#, r#""lybr0""#),
            (r#"[{"concat": ["lybr0", "banana"]}]"#, "banana"),
            (r#"[{"concat": ["lybr0"]}]"#, r#"["lybr0"]"#),
            (r#"[{"concat": [7, "10.0.0.1"]}]"#, "7"),
            (r#"[{"concat": ["a", {"prefix": {"addr": "10.0.0.0", "len": 33}}]}]"#, "33"),
            (r#"[{"concat": ["a", {"range": ["10.0.0.9", "10.0.0.1"]}]}]"#, "10.0.0.9"),
            (r#"[{"concat": ["a", {"range": ["10.0.0.1"]}]}]"#, "range"),
            (r#"[{"concat": ["a", null]}]"#, "null"),
        ] {
            let err = read(&nat, elem).unwrap_err();
            assert!(err.contains(names), "{elem}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let ports = Set::new("ports", &[InetService], false);
        assert!(read(&ports, "[70000]").unwrap_err().contains("70000"));
        let macs = Set::new("macs", &[EtherAddr], false);
        assert!(read(&macs, r#"["52:54:00:00:00"]"#).is_err());
        let map = Set::map("m", &[Ifname], &[Mark], false);
        assert!(read(&map, r#"["a"]"#).unwrap_err().contains("map element"));
        assert!(parse_listing("not json", &nat).is_err());
        assert!(parse_listing(r#"{"nftables": []}"#, &nat).unwrap_err().contains("nat_nets"));
        assert!(parse_listing(&listing("set", "nat_nets", r#""x""#), &nat).is_err());
    }
}

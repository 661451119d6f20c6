//! Living beside other tools' firewalls (docs/coexistence.md).
//!
//! A packet crosses every base chain at a hook; an accept in lanyard's
//! chain does not stop another table's chain from dropping it. Docker sets
//! its FORWARD policy to drop, and with bridge netfilter on (Docker turns it
//! on) that drops even frames between two VMs of one lanyard bridge.
//!
//! lanyard's forward chain marks what its policy accepts
//! ([`crate::planner::firewall::ACCEPT_MARK`]). Here:
//! - [`forward_drops`]: the other tables' forward chains whose policy is
//!   drop, so the daemon can say which will cut its networks;
//! - [`docker_user`]: whether Docker's `DOCKER-USER` chain (its documented
//!   place for other rules) holds lanyard's three rules, and the commands
//!   that put them at its top. Marked packets heading into Docker's
//!   networks (`docker0`, `br-*`) return to Docker's own chains, so its
//!   containers stay exactly as isolated as before; other marked packets
//!   are accepted. Nothing else of anyone else's ruleset is touched.

use serde_json::Value;

/// Comment that names lanyard's rules in DOCKER-USER.
pub const RULE_COMMENT_PREFIX: &str = "lanyard:";

/// The rules lanyard keeps at the top of DOCKER-USER, top first.
pub fn docker_user_rules(mark: u32) -> Vec<String> {
    let m = format!("meta mark & {mark:#010x} == {mark:#010x}");
    vec![
        format!("{m} oifname \"docker0\" return comment \"{RULE_COMMENT_PREFIX} Docker decides for its networks\""),
        format!("{m} oifname \"br-*\" return comment \"{RULE_COMMENT_PREFIX} Docker decides for its networks\""),
        format!("{m} accept comment \"{RULE_COMMENT_PREFIX} accept what lanyard's policy accepted\""),
    ]
}

/// Where DOCKER-USER lives.
pub const DOCKER_USER: (&str, &str, &str) = ("ip", "filter", "DOCKER-USER");

/// `family table chain` of every base chain hooked at forward with policy
/// drop, outside lanyard's table, from a `list chains` JSON listing.
pub fn forward_drops(listing: &str, own_table: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(listing).map_err(|e| format!("unreadable chain listing: {e}"))?;
    let items = v["nftables"].as_array().ok_or("chain listing without \"nftables\"")?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .filter(|c| !(c["table"] == own_table && c["family"] == "inet"))
        .map(|c| format!("{} {} {}", s(&c["family"]), s(&c["table"]), s(&c["name"])))
        .collect())
}

/// Whether a `list chains` listing has Docker's DOCKER-USER chain.
pub fn has_docker_user(listing: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(listing) else { return false };
    v["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .filter_map(|i| i.get("chain"))
            .any(|c| c["family"] == DOCKER_USER.0 && c["table"] == DOCKER_USER.1 && c["name"] == DOCKER_USER.2)
    })
}

/// lanyard's rules in a `list chain ip filter DOCKER-USER` JSON listing:
/// (position from the top, handle) of each rule whose comment is ours.
pub fn our_rules(listing: &str) -> Result<Vec<(usize, u64)>, String> {
    let v: Value = serde_json::from_str(listing).map_err(|e| format!("unreadable DOCKER-USER listing: {e}"))?;
    let items = v["nftables"].as_array().ok_or("DOCKER-USER listing without \"nftables\"")?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("rule"))
        .enumerate()
        .filter(|(_, r)| r["comment"].as_str().is_some_and(|c| c.starts_with(RULE_COMMENT_PREFIX)))
        .filter_map(|(pos, r)| Some((pos, r["handle"].as_u64()?)))
        .collect())
}

/// The commands that make DOCKER-USER start with exactly lanyard's rules,
/// given where ours are now; None when they already do.
pub fn repair_commands(ours: &[(usize, u64)], mark: u32) -> Option<String> {
    let wanted = docker_user_rules(mark);
    let in_place = ours.len() == wanted.len() && ours.iter().enumerate().all(|(i, (pos, _))| *pos == i);
    if in_place {
        return None;
    }
    let (family, table, chain) = DOCKER_USER;
    let mut out = String::new();
    for (_, handle) in ours {
        out.push_str(&format!("delete rule {family} {table} {chain} handle {handle}\n"));
    }
    // Each insert goes to the top: insert the last one first.
    for rule in wanted.iter().rev() {
        out.push_str(&format!("insert rule {family} {table} {chain} {rule}\n"));
    }
    Some(out)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAINS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 1}},
      {"chain": {"family": "inet", "table": "lanyard", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "other", "name": "fw", "handle": 3, "type": "filter", "hook": "forward", "prio": 5, "policy": "drop"}},
      {"chain": {"family": "inet", "table": "other", "name": "in", "handle": 4, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}]}"#;

    #[test]
    fn finds_foreign_forward_drops_and_docker_user() {
        assert_eq!(forward_drops(CHAINS, "lanyard").unwrap(), vec!["ip filter FORWARD", "inet other fw"]);
        assert!(has_docker_user(CHAINS));
        assert!(!has_docker_user(r#"{"nftables": []}"#));
        assert!(forward_drops("garbage", "lanyard").is_err());
    }

    #[test]
    fn docker_user_is_repaired_only_when_needed() {
        let listing = |comments: &[&str]| {
            let rules: Vec<String> = comments
                .iter()
                .enumerate()
                .map(|(i, c)| format!(r#"{{"rule": {{"handle": {}, "comment": "{c}", "expr": []}}}}"#, 10 + i))
                .collect();
            format!(r#"{{"nftables": [{{"chain": {{"name": "DOCKER-USER"}}}}, {}]}}"#, rules.join(","))
        };
        let good = listing(&["lanyard: a", "lanyard: b", "lanyard: c", "user rule"]);
        assert_eq!(repair_commands(&our_rules(&good).unwrap(), 0x2000_0000), None);
        let missing = listing(&["user rule"]);
        let cmds = repair_commands(&our_rules(&missing).unwrap(), 0x2000_0000).unwrap();
        assert_eq!(cmds.lines().count(), 3);
        assert!(cmds.lines().next().unwrap().contains("accept"), "the accept goes in first, to end up last");
        let moved = listing(&["user rule", "lanyard: a", "lanyard: b", "lanyard: c"]);
        let cmds = repair_commands(&our_rules(&moved).unwrap(), 0x2000_0000).unwrap();
        assert_eq!(cmds.matches("delete rule ip filter DOCKER-USER handle").count(), 3);
    }
}

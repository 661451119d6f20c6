//! `lanyard export` and `lanyard apply -f FILE`: projects, networks,
//! static hosts and port forwards as one declarative file (YAML or JSON), the way netplan or
//! an Incus preseed declares them. `apply` creates what is missing and
//! never changes or deletes what exists (a differing network is reported,
//! not rebuilt under its guests), so applying a file twice changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{emit, pct, printable, with_project, CliError, Client};
use crate::model::DEFAULT_PROJECT;

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// YAML.
    #[default]
    Yaml,
    /// JSON.
    Json,
}

/// What a file declares.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// Projects (the `default` project always exists).
    #[serde(default)]
    pub projects: Vec<Map<String, Value>>,
    /// Networks, as `POST /v1/networks` takes them.
    #[serde(default)]
    pub networks: Vec<Map<String, Value>>,
    /// Static DHCP hosts: `net`, `project` (default `default`), `mac`, `ip`, `name`.
    #[serde(default)]
    pub hosts: Vec<Map<String, Value>>,
    /// Port forwards: `net`, `project` (default `default`), and the fields
    /// of `POST /v1/networks/{net}/forwards`, `to_port` naming the VM (its
    /// port id is another on every daemon). Left out when there are none,
    /// so a file without forwards reads as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Map<String, Value>>,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn project_of(v: &Map<String, Value>) -> String {
    v.get("project").and_then(Value::as_str).unwrap_or(DEFAULT_PROJECT).to_string()
}

/// A network as `GET /v1/networks` shows it, as the spec that makes it
/// again (what lanyard chose, like the bridge name, is kept; state is not).
fn network_spec(n: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    let bridge_mode = n["mode"] == "bridge";
    m.insert("name".into(), n["name"].clone());
    if n["project"].as_str().is_some_and(|p| p != DEFAULT_PROJECT) {
        m.insert("project".into(), n["project"].clone());
    }
    if let Some(mgr) = n["manager"].as_str() {
        m.insert("manager".into(), mgr.into());
    }
    m.insert("mode".into(), n["mode"].clone());
    m.insert("subnet".into(), n["subnet"].clone());
    if !bridge_mode {
        m.insert("gateway".into(), n["gateway"].clone());
        let r = &n["dhcp_range"];
        m.insert("dhcp_range".into(), format!("{}-{}", text(&r["first"]), text(&r["last"])).into());
        m.insert("domain".into(), n["domain"].clone());
    }
    for k in ["bridge", "mtu", "uplink", "vlan", "vlan_backend", "lease_time", "overlay"] {
        if !n[k].is_null() {
            m.insert(k.into(), n[k].clone());
        }
    }
    m.insert("autostart".into(), n["autostart"].clone());
    m
}

/// The daemon's state as a [`Declared`]; networks made on demand by the
/// VLAN manager are left out (a project's first port makes them again).
pub fn current(c: &Client) -> Result<Declared, CliError> {
    let mut d = Declared::default();
    for p in c.call("GET", "/v1/projects", None)?.as_array().into_iter().flatten() {
        if p["name"] != DEFAULT_PROJECT {
            let mut m = Map::new();
            m.insert("name".into(), p["name"].clone());
            if p["description"].as_str().is_some_and(|s| !s.is_empty()) {
                m.insert("description".into(), p["description"].clone());
            }
            d.projects.push(m);
        }
    }
    for n in c.call("GET", "/v1/networks", None)?.as_array().into_iter().flatten() {
        if n["manager"] == "vlan" {
            continue;
        }
        let spec = network_spec(n);
        let project = project_of(&spec);
        let path = with_project(&format!("/v1/networks/{}/hosts", pct(&text(&n["name"]))), Some(&project));
        for h in c.call("GET", &path, None)?.as_array().into_iter().flatten() {
            let mut m = Map::new();
            m.insert("net".into(), n["name"].clone());
            if project != DEFAULT_PROJECT {
                m.insert("project".into(), project.clone().into());
            }
            m.insert("mac".into(), h["mac"].clone());
            m.insert("ip".into(), h["ip"].clone());
            if !h["name"].is_null() {
                m.insert("name".into(), h["name"].clone());
            }
            d.hosts.push(m);
        }
        if !matches!(n["mode"].as_str(), Some("nat" | "route")) {
            // Only these take forwards: no need to ask.
            d.networks.push(spec);
            continue;
        }
        let path = with_project(&format!("/v1/networks/{}/forwards", pct(&text(&n["name"]))), Some(&project));
        for f in c.call("GET", &path, None)?.as_array().into_iter().flatten() {
            let mut m = Map::new();
            m.insert("net".into(), n["name"].clone());
            if project != DEFAULT_PROJECT {
                m.insert("project".into(), project.clone().into());
            }
            for k in ["proto", "host_port", "address"] {
                if !f[k].is_null() {
                    m.insert(k.into(), f[k].clone());
                }
            }
            m.insert("to_port".into(), f["vm"].clone());
            m.insert("to_port_number".into(), f["to_port_number"].clone());
            d.forwards.push(m);
        }
        d.networks.push(spec);
    }
    Ok(d)
}

/// `lanyard export`.
pub fn export(c: &Client, format: Format) -> Result<(), CliError> {
    let d = current(c)?;
    let out = match format {
        Format::Json => {
            serde_json::to_string_pretty(&d).map(|s| s + "\n").map_err(|e| CliError::Protocol(e.to_string()))?
        }
        Format::Yaml => serde_yaml::to_string(&d).map_err(|e| CliError::Protocol(e.to_string()))?,
    };
    emit(&out)
}

/// Reads a declared file: JSON when it starts with '{', YAML otherwise
/// (YAML 1.2 holds JSON, but serde_yaml's errors for JSON are poorer).
pub fn parse(text: &str) -> Result<Declared, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("not a lanyard config (JSON): {e}"))
    } else {
        serde_yaml::from_str(text).map_err(|e| format!("not a lanyard config (YAML): {e}"))
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create a project.
    Project(Map<String, Value>),
    /// Create a network.
    Network(Map<String, Value>),
    /// Add a static host.
    Host(Map<String, Value>),
    /// Add a port forward.
    Forward(Map<String, Value>),
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Project(p) => format!("+ project {}", printable(&text(&p["name"]))),
            Step::Network(n) => format!(
                "+ network {}{} ({}, {})",
                printable(&text(&n["name"])),
                in_project(n),
                printable(&text(&n["mode"])),
                printable(&text(&n["subnet"]))
            ),
            Step::Host(h) => format!(
                "+ static host {} {} on network {}{}",
                printable(&text(&h["mac"])),
                printable(&text(&h["ip"])),
                printable(&text(&h["net"])),
                in_project(h)
            ),
            Step::Forward(f) => format!(
                "+ forward {} to {}:{} on network {}{}",
                forward_label(f),
                printable(&text(&f["to_port"])),
                printable(&s_or(&f["to_port_number"], &f["host_port"])),
                printable(&text(&f["net"])),
                in_project(f)
            ),
        }
    }
}

/// A JSON scalar as text (`-` for none), else `or`'s.
fn s_or(v: &Value, or: &Value) -> String {
    match (v, or) {
        (Value::Null, Value::Null) => "-".into(),
        (Value::Null, o) => super::s(o),
        (v, _) => super::s(v),
    }
}

/// `tcp/8080` or `tcp/192.0.2.1:8080`, as the daemon names a forward.
fn forward_label(f: &Map<String, Value>) -> String {
    let proto = text(f.get("proto").unwrap_or(&Value::Null));
    let port = super::s(f.get("host_port").unwrap_or(&Value::Null));
    match f.get("address").and_then(Value::as_str) {
        Some(a) => format!("{}/{}:{}", printable(&proto), printable(a), printable(&port)),
        None => format!("{}/{}", printable(&proto), printable(&port)),
    }
}

fn in_project(v: &Map<String, Value>) -> String {
    let p = project_of(v);
    if p == DEFAULT_PROJECT {
        String::new()
    } else {
        format!(" in project {}", printable(&p))
    }
}

/// What applying `want` to `have` does: the steps, and what exists but
/// differs (reported, never changed).
pub fn plan(want: &Declared, have: &Declared) -> (Vec<Step>, Vec<String>) {
    let mut steps = Vec::new();
    let mut differ = Vec::new();
    for p in &want.projects {
        if text(&p["name"]) != DEFAULT_PROJECT && !have.projects.iter().any(|h| h["name"] == p["name"]) {
            steps.push(Step::Project(p.clone()));
        }
    }
    let key = |n: &Map<String, Value>| (project_of(n), text(n.get("name").unwrap_or(&Value::Null)));
    for n in &want.networks {
        match have.networks.iter().find(|h| key(h) == key(n)) {
            None => steps.push(Step::Network(n.clone())),
            Some(h) => {
                let changed: Vec<&str> =
                    n.iter().filter(|(k, v)| h.get(k.as_str()) != Some(v)).map(|(k, _)| k.as_str()).collect();
                if !changed.is_empty() {
                    differ.push(format!(
                        "network {}{} exists with another {}: not changed",
                        printable(&key(n).1),
                        in_project(n),
                        changed.join(", ")
                    ));
                }
            }
        }
    }
    let hkey = |h: &Map<String, Value>| (project_of(h), text(&h["net"]), text(&h["mac"]).to_ascii_lowercase());
    for h in &want.hosts {
        match have.hosts.iter().find(|x| hkey(x) == hkey(h)) {
            None => steps.push(Step::Host(h.clone())),
            Some(x) if x.get("ip") != h.get("ip") || x.get("name") != h.get("name") => differ.push(format!(
                "static host {} on network {}{} exists with another address or name: not changed",
                printable(&text(&h["mac"])),
                printable(&text(&h["net"])),
                in_project(h)
            )),
            Some(_) => {}
        }
    }
    // A forward is one protocol and port (on one address) of one network.
    let fkey = |f: &Map<String, Value>| (project_of(f), text(&f["net"]), forward_label(f));
    let target = |f: &Map<String, Value>| (text(&f["to_port"]), s_or(&f["to_port_number"], &f["host_port"]));
    for f in &want.forwards {
        match have.forwards.iter().find(|x| fkey(x) == fkey(f)) {
            None => steps.push(Step::Forward(f.clone())),
            Some(x) if target(x) != target(f) => differ.push(format!(
                "forward {} on network {}{} exists to another VM or port: not changed",
                forward_label(f),
                printable(&text(&f["net"])),
                in_project(f)
            )),
            Some(_) => {}
        }
    }
    (steps, differ)
}

/// `lanyard apply -f FILE [--dry-run]`.
pub fn apply(c: &Client, text_in: &str, dry_run: bool) -> Result<(), CliError> {
    let want = parse(text_in).map_err(CliError::Usage)?;
    let have = current(c)?;
    let (steps, differ) = plan(&want, &have);
    for d in &differ {
        eprintln!("warning: {d}");
    }
    if steps.is_empty() {
        return emit("Nothing to change\n");
    }
    let mut out = String::new();
    let mut skipped = 0;
    for s in &steps {
        if !dry_run {
            match s {
                Step::Forward(f) => {
                    let project = project_of(f);
                    let path =
                        with_project(&format!("/v1/networks/{}/forwards", pct(&text(&f["net"]))), Some(&project));
                    let mut body = f.clone();
                    body.remove("net");
                    body.remove("project");
                    match c.call("POST", &path, Some(&Value::Object(body))) {
                        Ok(v) => v,
                        // Ports are not in the file: a forward to a VM that
                        // has no port here yet waits for the next apply.
                        Err(CliError::Refused { kind, message }) if kind == "not_found" => {
                            eprintln!(
                                "warning: forward {} on network {}{} not created: {message}; apply again once the \
                                 VM has its port",
                                forward_label(f),
                                printable(&text(&f["net"])),
                                in_project(f)
                            );
                            skipped += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Step::Project(p) => c.call("POST", "/v1/projects", Some(&Value::Object(p.clone())))?,
                Step::Network(n) => c.call("POST", "/v1/networks", Some(&Value::Object(n.clone())))?,
                Step::Host(h) => {
                    let project = project_of(h);
                    let path = with_project(&format!("/v1/networks/{}/hosts", pct(&text(&h["net"]))), Some(&project));
                    let body = json!({ "mac": h["mac"], "ip": h["ip"], "name": h.get("name") });
                    c.call("POST", &path, Some(&body))?
                }
            };
        }
        out.push_str(&s.describe());
        out.push('\n');
    }
    if dry_run {
        out.push_str(&format!("Plan: {} to create (--dry-run: nothing changed)\n", steps.len()));
    } else if skipped > 0 {
        out.push_str(&format!("Applied: {} created, {skipped} waiting for their VMs' ports\n", steps.len() - skipped));
    } else {
        out.push_str(&format!("Applied: {} created\n", steps.len()));
    }
    emit(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_plan_creates_only_what_is_missing() {
        let want = Declared {
            projects: vec![obj(json!({"name": "a"})), obj(json!({"name": "default"}))],
            networks: vec![
                obj(json!({"name": "n1", "mode": "nat", "subnet": "10.0.0.0/24"})),
                obj(json!({"name": "n2", "mode": "route", "subnet": "10.0.1.0/24", "project": "a"})),
            ],
            hosts: vec![obj(json!({"net": "n1", "mac": "52:54:00:00:00:01", "ip": "10.0.0.5"}))],
            forwards: vec![obj(
                json!({"net": "n1", "proto": "tcp", "host_port": 8080, "to_port": "web1", "to_port_number": 80}),
            )],
        };
        let (steps, differ) = plan(&want, &Declared::default());
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert_eq!(steps[4].describe(), "+ forward tcp/8080 to web1:80 on network n1");
        assert!(differ.is_empty());
        // The same state again: nothing to do.
        let (steps, differ) = plan(&want, &want);
        assert!(steps.is_empty() && differ.is_empty(), "{steps:?} {differ:?}");
        // A network of another subnet is reported, never recreated.
        let mut have = want.clone();
        have.networks[0].insert("subnet".into(), "10.9.0.0/24".into());
        let (steps, differ) = plan(&want, &have);
        assert!(steps.is_empty(), "{steps:?}");
        assert!(differ[0].contains("subnet"), "{differ:?}");
        // A forward of the same port to another VM: reported, not changed.
        let mut have = want.clone();
        have.forwards[0].insert("to_port".into(), "web2".into());
        let (steps, differ) = plan(&want, &have);
        assert!(steps.is_empty(), "{steps:?}");
        assert!(differ[0].contains("forward tcp/8080"), "{differ:?}");
    }

    #[test]
    fn files_parse_as_yaml_or_json_and_unknown_keys_are_refused() {
        let y = "networks:\n  - name: n1\n    mode: nat\n    subnet: 10.0.0.0/24\n";
        assert_eq!(parse(y).unwrap().networks.len(), 1);
        assert_eq!(parse("{\"hosts\": []}").unwrap(), Declared::default());
        assert!(parse("netwroks: []").is_err());
        assert!(parse("{").is_err());
        assert!(parse("- just\n- a list").is_err());
    }
}

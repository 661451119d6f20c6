//! `lanyard fip ...`: floating IP pools (admin) and floating IPs.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{details, pct, print, printable, query_value, s, table, CliError, Client, OutputArg};

/// `lanyard fip ...`
#[derive(Debug, Subcommand)]
pub enum FipCommand {
    /// Floating IP pools (admin): ranges of outside addresses.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Allocate a floating IP to a project (the pool's lowest free address, or --ip).
    Create {
        /// The pool (default: the only one).
        #[arg(long)]
        pool: Option<String>,
        /// A particular address of the pool.
        #[arg(long)]
        ip: Option<String>,
        /// The project that holds it (default "default", or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List floating IPs with their ports, VMs and fixed IPs.
    List {
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one floating IP.
    Show {
        /// The floating IP.
        fip: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Lead a floating IP to a port of its project: inbound traffic reaches the port's fixed
    /// IP, the port's own traffic leaves from the floating IP. An association it had moves,
    /// established flows included.
    Associate {
        /// The floating IP.
        fip: String,
        /// A port id, or the name of a VM with one port.
        port: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// End a floating IP's association (the project keeps it).
    Disassociate {
        /// The floating IP.
        fip: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Give a floating IP back to its pool.
    Delete {
        /// The floating IP.
        fip: String,
    },
}

/// `lanyard fip pool ...`
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Declare a pool: addresses reachable on a host interface, where the host answers ARP for
    /// the associated ones.
    Create {
        /// Pool name.
        name: String,
        /// FIRST-LAST, e.g. 203.0.113.10-203.0.113.200.
        #[arg(long)]
        range: String,
        /// The host interface the addresses are reachable on.
        #[arg(long)]
        interface: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List pools with how many addresses are held and associated.
    List {
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a pool none of whose addresses is held.
    Delete {
        /// Pool name.
        name: String,
    },
}

fn fip_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| vec![s(&f["ip"]), s(&f["pool"]), s(&f["project"]), s(&f["port"]), s(&f["vm"]), s(&f["fixed_ip"])])
        .collect();
    table(&["FIP", "Pool", "Project", "Port", "VM", "Fixed IP"], &rows)
}

fn fip_detail(f: &Value) -> String {
    let fields = [
        ("FIP", s(&f["ip"])),
        ("Pool", s(&f["pool"])),
        ("Project", s(&f["project"])),
        ("Port", s(&f["port"])),
        ("VM", s(&f["vm"])),
        ("Fixed IP", s(&f["fixed_ip"])),
        ("Network", s(&f["net"])),
    ];
    details(&fields, 10)
}

fn pool_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                s(&p["name"]),
                format!("{}-{}", s(&p["first"]), s(&p["last"])),
                s(&p["interface"]),
                s(&p["size"]),
                s(&p["allocated"]),
                s(&p["associated"]),
            ]
        })
        .collect();
    table(&["Name", "Range", "Interface", "Size", "Allocated", "Associated"], &rows)
}

/// Runs a `fip` command.
pub fn run(c: &Client, cmd: FipCommand) -> Result<(), CliError> {
    match cmd {
        FipCommand::Pool(PoolCommand::Create { name, range, interface, out }) => {
            let body = json!({ "name": name, "range": range, "interface": interface });
            let v = c.call("POST", "/v1/fip-pools", Some(&body))?;
            print(out.output, &v, |p| pool_rows(&Value::Array(vec![p.clone()])))
        }
        FipCommand::Pool(PoolCommand::List { out }) => {
            let v = c.call("GET", "/v1/fip-pools", None)?;
            print(out.output, &v, pool_rows)
        }
        FipCommand::Pool(PoolCommand::Delete { name }) => {
            c.call("DELETE", &format!("/v1/fip-pools/{}", pct(&name)), None)?;
            super::emit(&format!("Floating IP pool {} deleted\n", printable(&name)))
        }
        FipCommand::Create { pool, ip, project, out } => {
            let body = json!({ "pool": pool, "ip": ip, "project": project });
            let v = c.call("POST", "/v1/fips", Some(&body))?;
            print(out.output, &v, fip_detail)
        }
        FipCommand::List { project, out } => {
            let path = match &project {
                Some(p) => format!("/v1/fips?project={}", query_value(p)),
                None => "/v1/fips".into(),
            };
            let v = c.call("GET", &path, None)?;
            print(out.output, &v, fip_rows)
        }
        FipCommand::Show { fip, out } => {
            let v = c.call("GET", &format!("/v1/fips/{}", pct(&fip)), None)?;
            print(out.output, &v, fip_detail)
        }
        FipCommand::Associate { fip, port, out } => {
            let body = json!({ "port": port });
            let v = c.call("POST", &format!("/v1/fips/{}/associate", pct(&fip)), Some(&body))?;
            print(out.output, &v, fip_detail)
        }
        FipCommand::Disassociate { fip, out } => {
            let v = c.call("POST", &format!("/v1/fips/{}/disassociate", pct(&fip)), Some(&json!({})))?;
            print(out.output, &v, fip_detail)
        }
        FipCommand::Delete { fip } => {
            c.call("DELETE", &format!("/v1/fips/{}", pct(&fip)), None)?;
            super::emit(&format!("Floating IP {} deleted\n", printable(&fip)))
        }
    }
}

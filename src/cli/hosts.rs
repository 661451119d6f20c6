//! `lanyard net host ...`: static DHCP hosts (MACs that are not ports).

use clap::Subcommand;
use serde_json::{json, Value};

use super::{in_project, pct, print, printable, s, table, with_project, CliError, Client, OutputArg};

/// `lanyard net host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Give a MAC that is not a port a fixed address and a DNS name
    /// (libvirt's `<host mac= ip= name=>`).
    Add {
        /// Network name.
        net: String,
        /// The client's MAC.
        #[arg(long)]
        mac: String,
        /// The address DHCP always gives it.
        #[arg(long)]
        ip: String,
        /// Its name in the network's DNS.
        #[arg(long)]
        name: Option<String>,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List a network's static hosts.
    List {
        /// Network name.
        net: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a static host (a lease its client holds runs out normally).
    Delete {
        /// Network name.
        net: String,
        /// The client's MAC.
        #[arg(long)]
        mac: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
    },
}

fn host_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> =
        v.as_array().into_iter().flatten().map(|h| vec![s(&h["mac"]), s(&h["ip"]), s(&h["name"])]).collect();
    table(&["MAC", "IP", "Name"], &rows)
}

/// Runs a `net host` command.
pub fn run(c: &Client, cmd: HostCommand) -> Result<(), CliError> {
    match cmd {
        HostCommand::Add { net, mac, ip, name, project, out } => {
            let path = with_project(&format!("/v1/networks/{}/hosts", pct(&net)), project.as_deref());
            let v = c.call("POST", &path, Some(&json!({ "mac": mac, "ip": ip, "name": name })))?;
            print(out.output, &v, |h| host_rows(&Value::Array(vec![h.clone()])))
        }
        HostCommand::List { net, project, out } => {
            let path = with_project(&format!("/v1/networks/{}/hosts", pct(&net)), project.as_deref());
            let v = c.call("GET", &path, None)?;
            print(out.output, &v, host_rows)
        }
        HostCommand::Delete { net, mac, project } => {
            let path = with_project(&format!("/v1/networks/{}/hosts/{}", pct(&net), pct(&mac)), project.as_deref());
            c.call("DELETE", &path, None)?;
            super::emit(&format!(
                "Static host {} deleted from network {}{}\n",
                printable(&mac),
                printable(&net),
                in_project(project.as_deref())
            ))
        }
    }
}

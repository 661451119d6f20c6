//! `lanyard net forward ...`: port forwards (a host port to a guest's
//! port), shaped like `net host ...`.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{in_project, pct, print, printable, query_value, s, table, with_project, CliError, Client, OutputArg};

/// `lanyard net forward ...`
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Forward a host port (on every address of the host, or one) to a
    /// port of one of the network's guests (`docker run -p 8080:80`).
    Add {
        /// Network name (a nat or route network).
        net: String,
        /// tcp or udp.
        #[arg(long)]
        proto: String,
        /// The host's port.
        #[arg(long)]
        host_port: u32,
        /// The lanyard port (an id, or a VM with one port on NET), and
        /// the guest's port after a colon (default: the host's port).
        #[arg(long, value_name = "PORT_OR_VM[:PORT]")]
        to: String,
        /// Only traffic to this IPv4 address of the host (default: any
        /// of its addresses).
        #[arg(long)]
        address: Option<String>,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List a network's port forwards.
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
    /// Delete a port forward (new connections to it are refused; running
    /// ones end as they would).
    Delete {
        /// Network name.
        net: String,
        /// tcp or udp.
        #[arg(long)]
        proto: String,
        /// The host's port.
        #[arg(long)]
        host_port: u32,
        /// Which forward, when the port is forwarded on several addresses.
        #[arg(long)]
        address: Option<String>,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
    },
}

/// `PORT_OR_VM[:PORT]` as the port and the guest's port number: VM names
/// and port ids never hold a ':', so the last one splits them.
pub fn split_target(to: &str) -> Result<(&str, Option<u32>), CliError> {
    match to.rsplit_once(':') {
        None => Ok((to, None)),
        Some((port, number)) => match number.parse::<u32>() {
            Ok(n) => Ok((port, Some(n))),
            Err(_) => Err(CliError::Usage(format!(
                "invalid --to {}: write PORT_OR_VM or PORT_OR_VM:PORT, e.g. web1:80",
                printable(to)
            ))),
        },
    }
}

fn forward_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let address = if f["address"].is_null() { "*".to_string() } else { s(&f["address"]) };
            let to = format!("{}:{}", s(&f["to_ip"]), s(&f["to_port_number"]));
            vec![s(&f["proto"]), address, s(&f["host_port"]), s(&f["vm"]), s(&f["to_port"]), to]
        })
        .collect();
    table(&["Proto", "Address", "Host-Port", "VM", "Port", "To"], &rows)
}

/// Runs a `net forward` command.
pub fn run(c: &Client, cmd: ForwardCommand) -> Result<(), CliError> {
    match cmd {
        ForwardCommand::Add { net, proto, host_port, to, address, project, out } => {
            let (to_port, to_port_number) = split_target(&to)?;
            let path = with_project(&format!("/v1/networks/{}/forwards", pct(&net)), project.as_deref());
            let body = json!({
                "proto": proto, "host_port": host_port, "to_port": to_port,
                "to_port_number": to_port_number, "address": address,
            });
            let v = c.call("POST", &path, Some(&body))?;
            print(out.output, &v, |f| forward_rows(&Value::Array(vec![f.clone()])))
        }
        ForwardCommand::List { net, project, out } => {
            let path = with_project(&format!("/v1/networks/{}/forwards", pct(&net)), project.as_deref());
            let v = c.call("GET", &path, None)?;
            print(out.output, &v, forward_rows)
        }
        ForwardCommand::Delete { net, proto, host_port, address, project } => {
            let mut path = with_project(
                &format!("/v1/networks/{}/forwards/{}/{host_port}", pct(&net), pct(&proto)),
                project.as_deref(),
            );
            if let Some(a) = &address {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(&format!("address={}", query_value(a)));
            }
            c.call("DELETE", &path, None)?;
            let on = address.as_deref().map(|a| format!(" on {}", printable(a))).unwrap_or_default();
            super::emit(&format!(
                "Port forward {}/{host_port}{on} deleted from network {}{}\n",
                printable(&proto),
                printable(&net),
                in_project(project.as_deref())
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_splits_at_its_last_colon() {
        assert_eq!(split_target("web1").unwrap(), ("web1", None));
        assert_eq!(split_target("web1:80").unwrap(), ("web1", Some(80)));
        assert_eq!(split_target("1a2b3c4d:8080").unwrap(), ("1a2b3c4d", Some(8080)));
        assert!(matches!(split_target("web1:http"), Err(CliError::Usage(_))));
    }
}

//! `lanyard import libvirt FILE.xml`: a libvirt network definition made a
//! lanyard network with its static hosts ([`crate::libvirt`]).

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::{pct, print, printable, with_project, CliError, Client, OutputArg};
use crate::libvirt::{parse_network, MAX_XML_BYTES};

/// `lanyard import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Create the network a libvirt network definition describes (`virsh
    /// net-dumpxml NET`, or /etc/libvirt/qemu/networks/NET.xml), with its
    /// DHCP range and static hosts. What lanyard cannot do the same way is
    /// refused, all of it in one error; what guests never see (the
    /// bridge's MAC, STP, the UUID) is dropped with a warning.
    Libvirt {
        /// The XML file ('-': standard input).
        file: PathBuf,
        /// Another name for the network (libvirt's may be longer than lanyard's 15 bytes).
        #[arg(long)]
        name: Option<String>,
        /// The project the network belongs to.
        #[arg(long)]
        project: Option<String>,
        /// Start the network at boot (libvirt keeps autostart outside the XML).
        #[arg(long)]
        autostart: bool,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
}

/// A file's text (XML, a config), at most [`MAX_XML_BYTES`] of it (one byte more tells
/// the parser it is too large).
pub fn read_text(file: &PathBuf) -> Result<String, CliError> {
    let path = file.display().to_string();
    let shown = printable(&path);
    let mut bytes = Vec::new();
    let limit = MAX_XML_BYTES as u64 + 1;
    let read = if file.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| CliError::Usage(format!("cannot read {shown}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| CliError::Usage(format!("{shown} is not UTF-8 text")))
}

/// Runs an `import` command.
pub fn run(c: &Client, cmd: ImportCommand) -> Result<(), CliError> {
    let ImportCommand::Libvirt { file, name, project, autostart, out } = cmd;
    let xml = read_text(&file)?;
    let mut imported = parse_network(&xml).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(n) = name {
        imported.network.name = n;
    }
    if autostart {
        imported.network.autostart = Some(true);
    }
    imported.network.project.clone_from(&project);
    let spec = serde_json::to_value(&imported.network).map_err(|e| CliError::Protocol(e.to_string()))?;
    let net = c.call("POST", "/v1/networks", Some(&spec))?;
    let net_name = imported.network.name.clone();
    let hosts_path = with_project(&format!("/v1/networks/{}/hosts", pct(&net_name)), project.as_deref());
    let mut hosts = Vec::new();
    for h in &imported.hosts {
        let body = json!({ "mac": h.mac, "ip": h.ip, "name": h.name });
        match c.call("POST", &hosts_path, Some(&body)) {
            Ok(v) => hosts.push(v),
            Err(CliError::Refused { message, kind }) => {
                // All or nothing: a network without one of its hosts would
                // give that guest some other address.
                let gone = c.call(
                    "DELETE",
                    &with_project(&format!("/v1/networks/{}", pct(&net_name)), project.as_deref()),
                    None,
                );
                let kept = if gone.is_ok() { "the network was not kept" } else { "the network was created; delete it" };
                return Err(CliError::Refused { message: format!("static host {}: {message} ({kept})", h.mac), kind });
            }
            Err(e) => return Err(e),
        }
    }
    for w in &imported.warnings {
        eprintln!("warning: ignored {w}");
    }
    let all = json!({ "network": net, "hosts": hosts, "warnings": imported.warnings });
    print(out.output, &all, |v| {
        format!(
            "Network {} imported ({} mode, {}, {} static host{})\n",
            printable(&net_name),
            super::s(&v["network"]["mode"]),
            super::s(&v["network"]["subnet"]),
            hosts.len(),
            if hosts.len() == 1 { "" } else { "s" }
        )
    })
}

//! The command line: argument parsing, a small HTTP/1.1 client for the
//! daemon's unix socket, and tables that read like `virsh` and `brctl`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser as NonEmpty;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::model::DEFAULT_PROJECT;

pub mod declare;
pub mod fip;
pub mod forwards;
pub mod hosts;
pub mod import;
pub mod topo;

/// `lanyard --version`: the release and the git commit it was built from
/// ("unknown" when built outside git).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LANYARD_COMMIT"), ")");

/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/lanyard/lanyard.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lanyard";

/// lanyard: virtual networks for virtual machines.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version = VERSION, about)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "LANYARD_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A project's token: act as that project (sent as `Authorization: Bearer`).
    #[arg(long, global = true, env = "LANYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Talk to a daemon's TLS listener, https://HOST:PORT, instead of the socket
    /// (needs --token and --ca).
    #[arg(long, global = true, env = "LANYARD_URL")]
    pub url: Option<String>,
    /// The CA certificate (PEM) that signed the daemon's TLS certificate.
    #[arg(long, global = true, env = "LANYARD_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Aligned table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// The `-o/--output` flag shared by listings and creates.
#[derive(Debug, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the current network namespace.
    Daemon {
        /// A TOML file of these options (keys as the flags: `log-level`,
        /// `metrics-listen`, `etcd`, ...); a flag wins over it. Read again on
        /// SIGHUP (the log level applies at once).
        #[arg(long, env = "LANYARD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the state database lives [default: /var/lib/lanyard].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Give the API socket to this group (name or number): its members
        /// are admins, like root.
        #[arg(long)]
        socket_group: Option<String>,
        /// Also serve the API on this TCP address (e.g. 0.0.0.0:7443), with
        /// TLS only and to project tokens only.
        #[arg(long, env = "LANYARD_LISTEN", value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Serve Prometheus metrics (GET /metrics only, plain HTTP, no token)
        /// on this TCP address, e.g. 127.0.0.1:9477.
        #[arg(long, env = "LANYARD_METRICS_LISTEN", value_name = "ADDR:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Serve a read-only web page (topology, networks, ports, leases; every
        /// project's, no token) on this TCP address, e.g. 127.0.0.1:9478.
        #[arg(long, env = "LANYARD_WEB_LISTEN", value_name = "ADDR:PORT")]
        web_listen: Option<std::net::SocketAddr>,
        /// The TLS certificate chain for --listen (PEM).
        #[arg(long, env = "LANYARD_TLS_CERT", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// The TLS private key for --listen (PEM).
        #[arg(long, env = "LANYARD_TLS_KEY", value_name = "PEM")]
        tls_key: Option<PathBuf>,
        /// Join a cluster: keep desired state in etcd at these client URLs
        /// (http://HOST:PORT, comma-separated) instead of the state database.
        #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
        etcd: Vec<String>,
        /// This host's name in the cluster (with --etcd).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// The interface whose first IPv4 address this node publishes as
        /// its underlay address (with --etcd).
        #[arg(long, value_name = "IF")]
        underlay: Option<String>,
        /// What to log: error, warn, info, debug or trace, or a `tracing`
        /// filter such as `lanyard::dhcp=debug,info`.
        /// [default: info]
        #[arg(long, env = "LANYARD_LOG", value_name = "FILTER")]
        log_level: Option<String>,
    },
    /// Projects: the owners of networks and ports.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Networks.
    #[command(subcommand)]
    Net(NetCommand),
    /// VM ports (TAP or veth) on networks.
    #[command(subcommand)]
    Port(PortCommand),
    /// DHCP leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Floating IPs: outside addresses that lead to a port and move between ports.
    #[command(subcommand)]
    Fip(fip::FipCommand),
    /// Print projects, networks and static hosts as a file `lanyard apply` reads.
    Export {
        /// The file's format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: declare::Format,
    },
    /// Create the projects, networks and static hosts a file (YAML or JSON,
    /// as `lanyard export` writes) declares and the daemon lacks; what
    /// exists is never changed (a difference is a warning), so applying
    /// twice changes nothing.
    Apply {
        /// The file ('-': standard input).
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring over networks defined elsewhere (libvirt).
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// The hosts of the cluster (a single-host daemon: itself).
    #[command(subcommand)]
    Node(NodeCommand),
    /// nova-network's managers (the VLAN manager's configuration).
    #[command(subcommand)]
    Manager(ManagerCommand),
    /// lanyard's bridges, as `brctl show` prints them.
    Bridges(OutputArg),
    /// The daemon in one screen: version, uptime, store, counts, self-healing.
    Status(OutputArg),
    /// What is connected to what: uplinks, VLAN devices, bridges, ports,
    /// VMs and their addresses, as a tree, Graphviz DOT, SVG or JSON.
    Topo {
        /// Only this network.
        #[arg(long)]
        net: Option<String>,
        /// Only this project's networks (default: all the caller sees).
        #[arg(long)]
        project: Option<String>,
        /// How to draw it.
        #[arg(long, value_enum, default_value = "text")]
        format: topo::TopoFormat,
        /// `-o json` is `--format json`.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print the shell completion script for bash, zsh or fish.
    ///
    /// bash: `lanyard completions bash > /etc/bash_completion.d/lanyard`;
    /// zsh: into a directory of $fpath as `_lanyard`; fish: into
    /// ~/.config/fish/completions/lanyard.fish.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page lanyard(1), or write one page per command into --dir.
    Man {
        /// Write lanyard.1, lanyard-net.1, lanyard-net-create.1, ... here
        /// (the directory must exist).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the OpenAPI 3.1 description of the daemon's REST API (docs/openapi.json).
    Openapi,
    /// QEMU `script=`: attach the TAP QEMU just created to a network and
    /// register it as a port (also run as `lanyard-ifup` through a symlink).
    QemuIfup {
        /// The TAP QEMU created (QEMU passes it as the only argument).
        ifname: String,
        /// Network (default: $LANYARD_NET, else "default").
        #[arg(long, env = "LANYARD_NET", default_value = "default")]
        net: String,
        /// The network's project (default: $LANYARD_PROJECT, else "default", or the token's).
        #[arg(long, env = "LANYARD_PROJECT")]
        project: Option<String>,
        /// VM name (default: $LANYARD_VM, else QEMU's -name, else the TAP's name).
        #[arg(long, env = "LANYARD_VM")]
        vm: Option<String>,
        /// Guest MAC (default: $LANYARD_MAC, else the mac= of QEMU's NIC on this TAP).
        #[arg(long, env = "LANYARD_MAC")]
        mac: Option<String>,
    },
    /// QEMU `downscript=`: unregister the port on this TAP.
    QemuIfdown {
        /// The TAP QEMU is closing.
        ifname: String,
    },
}

/// The shells `lanyard completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// `lanyard completions SHELL`: the script, generated from the clap
/// definitions so that it never lags behind them.
pub fn completions(shell: CompletionShell) -> Result<(), CliError> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lanyard", &mut script);
    emit(&String::from_utf8_lossy(&script))
}

/// `lanyard man [--dir DIR]`: lanyard(1) on stdout, or a page per command
/// (and subcommand) written into `dir`.
pub fn man(dir: Option<&std::path::Path>) -> Result<(), CliError> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let internal = |message: String| CliError::Refused { message, kind: "internal".into() };
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| internal(format!("cannot render the man page: {e}")))?;
            emit(&String::from_utf8_lossy(&page))
        }
        Some(dir) => {
            if !dir.is_dir() {
                return Err(CliError::Usage(format!(
                    "--dir {}: no such directory",
                    printable(&dir.display().to_string())
                )));
            }
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| internal(format!("cannot write man pages into {}: {e}", dir.display())))
        }
    }
}

/// `lanyard net ...`
// Parsed once per process: the size of `Create` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Define and start a network.
    Create {
        /// Network name: 1-15 letters, digits, '-', '_' or '.', beginning with a letter or digit.
        name: String,
        /// nat, route, host-only, isolated, bridge or open (with --manager: nat).
        #[arg(long, required_unless_present = "manager")]
        mode: Option<String>,
        /// nova-network's manager: flat (given or created bridge, no DHCP: addresses as
        /// cloud-init data) or flatdhcp (DHCP hands each port its fixed IP).
        #[arg(long)]
        manager: Option<String>,
        /// IPv4 subnet, e.g. 192.168.122.0/24 (bridge mode: default the uplink's).
        #[arg(long)]
        subnet: Option<String>,
        /// Bridge mode: the NIC that joins the bridge (its addresses move to the bridge).
        /// With --vlan: the trunk the VLAN rides on. With --manager: the flat interface.
        #[arg(long)]
        uplink: Option<String>,
        /// 802.1Q VLAN id (1-4094) on --uplink: the network is that VLAN.
        #[arg(long)]
        vlan: Option<u16>,
        /// How the VLAN is made: subif (a VLAN device in a bridge per VLAN, the default)
        /// or filtering (one VLAN-aware bridge per uplink).
        #[arg(long)]
        vlan_backend: Option<String>,
        /// Host's address on the bridge (default: first host address).
        #[arg(long)]
        gateway: Option<String>,
        /// Dynamic DHCP pool, FIRST-LAST.
        #[arg(long)]
        dhcp_range: Option<String>,
        /// Bridge name (default lybrN).
        #[arg(long)]
        bridge: Option<String>,
        /// MTU of the bridge and ports.
        #[arg(long)]
        mtu: Option<u32>,
        /// DNS domain for guests (default: the network name).
        #[arg(long)]
        domain: Option<String>,
        /// DHCP lease time in seconds (default 3600), 120 to 31536000.
        #[arg(long, value_name = "SECS")]
        lease_time: Option<u32>,
        /// In a cluster: how the network spans the hosts, vxlan (the default for a
        /// bridge of its own), vlan (its --vlan on the trunk) or none (each host alone).
        #[arg(long, value_parser = ["vxlan", "vlan", "none"])]
        overlay: Option<String>,
        /// Start the network at boot.
        #[arg(long)]
        autostart: bool,
        /// The project the network belongs to.
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List active networks (like `virsh net-list`), of all projects
    /// (with a Project column) or of one.
    List {
        /// Also inactive ones.
        #[arg(long)]
        all: bool,
        /// Only this project's networks.
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one network.
    Show {
        /// Network name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Stop and delete a network with its leases; one that has ports only
    /// with --force, which deletes them too.
    Delete {
        /// Network name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Delete its ports too (their VMs lose their network).
        #[arg(long)]
        force: bool,
    },
    /// Change a network's autostart, DNS domain, DHCP range or lease time
    /// (the rest of a network cannot change: its bridge, addresses and
    /// guests depend on it).
    Edit(NetEdit),
    /// Static DHCP hosts: MACs that are not ports, with a fixed address
    /// and a DNS name.
    #[command(subcommand)]
    Host(hosts::HostCommand),
    /// Port forwards: a host port (TCP or UDP) to a port of a guest.
    #[command(subcommand)]
    Forward(forwards::ForwardCommand),
    /// Start a stopped network.
    Start {
        /// Network name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
    },
    /// Stop a network: bridge, rules and DHCP go; ports and leases stay.
    Stop {
        /// Network name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
    },
    /// Mark a network to start at boot.
    Autostart {
        /// Network name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Unmark it instead.
        #[arg(long)]
        disable: bool,
    },
}

/// `lanyard port ...`
#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Create a port for a VM.
    Create {
        /// Network to attach to (a trunk port's untagged network: --native). Without it
        /// (and --trunk): the project's own VLAN network from the VLAN manager.
        #[arg(long, alias = "native")]
        net: Option<String>,
        /// A trunk port: the VLAN networks the guest receives tagged
        /// (NET[,NET...]); its untagged frames are --native's, or none.
        #[arg(long, value_delimiter = ',')]
        trunk: Option<Vec<String>>,
        /// VM name (becomes its DHCP host name).
        #[arg(long)]
        vm: String,
        /// tap (for QEMU & co) or veth (for namespaces and containers).
        #[arg(long = "type", default_value = "tap")]
        port_type: String,
        /// veth: namespace that receives the peer: a name under /run/netns,
        /// or a process's, as its PID or /proc/PID/ns/net.
        #[arg(long)]
        netns: Option<String>,
        /// veth: the peer's name in that namespace.
        #[arg(long)]
        ifname: Option<String>,
        /// Guest MAC (default: random in 52:54:00).
        #[arg(long)]
        mac: Option<String>,
        /// Fixed IP (default: lowest free).
        #[arg(long)]
        ip: Option<String>,
        /// tap: user allowed to open the device.
        #[arg(long)]
        owner: Option<String>,
        /// tap: group allowed to open the device.
        #[arg(long)]
        group: Option<String>,
        /// The project of the network (and so of the port).
        #[arg(long)]
        project: Option<String>,
        /// Let the guest send from any MAC and IP (a router VM); by default
        /// the bridge drops what it sends from another than its own.
        #[arg(long)]
        no_spoof_check: bool,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create many ports at once, all or nothing, from a JSON array of
    /// port specs (`[{"net": "default", "vm": "vm1", "type": "tap"}, ...]`).
    CreateBatch {
        /// File with the array, or - for standard input.
        file: PathBuf,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List ports, of all projects (with a Project column) or of one.
    List {
        /// Only this VM's ports.
        #[arg(long)]
        vm: Option<String>,
        /// Only this network's ports (a network of --project, default the
        /// default project's).
        #[arg(long)]
        net: Option<String>,
        /// Only this project's ports.
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one port: its row and, for a TAP, the QEMU arguments.
    Show {
        /// Port id (see `lanyard port list`).
        #[arg(value_parser = NonEmpty::new())]
        id: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a port.
    Delete {
        /// Port id (see `lanyard port list`).
        #[arg(value_parser = NonEmpty::new())]
        id: String,
    },
    /// A port's configuration for its guest: with `--format cloud-init`,
    /// its NoCloud network-config (v2) and meta-data, or a `cidata` seed
    /// ISO (`--iso PATH`) to attach to the VM.
    Config {
        /// Port id (see `lanyard port list`).
        #[arg(value_parser = NonEmpty::new())]
        id: String,
        /// What to generate: cloud-init (the only format so far).
        #[arg(long, default_value = "cloud-init")]
        format: String,
        /// Write the seed as an ISO 9660 image (label cidata) to PATH.
        #[arg(long, value_name = "PATH")]
        iso: Option<PathBuf>,
        /// Overwrite PATH if it exists.
        #[arg(long, requires = "iso")]
        force: bool,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
}

/// `lanyard project ...`
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// Project name: 1-15 letters, digits, '-', '_' or '.', beginning with a letter or digit.
        name: String,
        /// Free text for people (at most 256 bytes).
        #[arg(long)]
        description: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List projects with what each owns.
    List {
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one project.
    Show {
        /// Project name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Change a project: --egress deny keeps its guests from starting connections beyond
    /// their own networks (DHCP, DNS and replies to inbound connections still flow).
    Set {
        /// Project name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
        /// allow or deny.
        #[arg(long)]
        egress: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Let PROJECT's guests start connections to another project's guests (all traffic, one
    /// protocol, or one port); the answers flow back. One direction only (admin only).
    Allow {
        /// The project whose guests connect.
        name: String,
        /// What they may reach.
        #[command(flatten)]
        grant: GrantArgs,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Take back exactly the grant `project allow` made with the same arguments (admin only).
    Deny {
        /// The project whose guests connected.
        name: String,
        /// The grant, as it was given.
        #[command(flatten)]
        grant: GrantArgs,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a project that owns no networks or ports (`default` stays).
    Delete {
        /// Project name.
        #[arg(value_parser = NonEmpty::new())]
        name: String,
    },
    /// A project's access tokens (admin only).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// What a grant between projects lets through (`project allow|deny`).
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The project whose guests are reached.
    #[arg(long)]
    to: String,
    /// tcp, udp or icmp (default: all traffic).
    #[arg(long)]
    proto: Option<String>,
    /// A TCP or UDP destination port (with --proto).
    #[arg(long)]
    port: Option<u16>,
}

impl GrantArgs {
    fn body(&self) -> Value {
        json!({ "to": self.to, "proto": self.proto, "port": self.port })
    }
}

/// `lanyard project token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token that acts for PROJECT; it is printed once and stored
    /// only as a hash.
    Create {
        /// The project.
        project: String,
        /// A label for people (e.g. who holds it).
        #[arg(long)]
        name: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// List PROJECT's tokens (never their secrets).
    List {
        /// The project.
        project: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete one of PROJECT's tokens: it stops working at once.
    Delete {
        /// The project.
        project: String,
        /// Token id (see `lanyard project token list`).
        id: String,
    },
}

/// `lanyard lease ...`
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// List a network's leases.
    List {
        /// Network name.
        #[arg(value_parser = NonEmpty::new())]
        net: String,
        /// The network's project (default: `default`, or the token's).
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Forget a guest's dynamic lease: its address is free again at once
    /// (a port's fixed address goes only with the port).
    Delete(LeaseDelete),
}

/// The arguments of `lanyard net edit`.
#[derive(Debug, Args)]
pub struct NetEdit {
    /// Network name.
    #[arg(value_parser = NonEmpty::new())]
    pub name: String,
    /// Start the network at boot.
    #[arg(long, conflicts_with = "no_autostart")]
    pub autostart: bool,
    /// Do not start the network at boot.
    #[arg(long)]
    pub no_autostart: bool,
    /// DNS domain for guests.
    #[arg(long)]
    pub domain: Option<String>,
    /// Dynamic DHCP pool, FIRST-LAST (leases outside it end at their renewal).
    #[arg(long)]
    pub dhcp_range: Option<String>,
    /// DHCP lease time in seconds, 120 to 31536000.
    #[arg(long, value_name = "SECS")]
    pub lease_time: Option<u32>,
    /// Refused with the reason: what `net create` fixes for good.
    #[arg(long, hide = true)]
    pub subnet: Option<String>,
    /// Refused with the reason.
    #[arg(long, hide = true)]
    pub gateway: Option<String>,
    /// Refused with the reason.
    #[arg(long, hide = true)]
    pub mode: Option<String>,
    /// Refused with the reason.
    #[arg(long, hide = true)]
    pub bridge: Option<String>,
    /// Refused with the reason.
    #[arg(long, hide = true)]
    pub mtu: Option<String>,
    /// The network's project (default: `default`, or the token's).
    #[arg(long)]
    pub project: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArg,
}

/// The arguments of `lanyard lease delete`.
#[derive(Debug, Args)]
pub struct LeaseDelete {
    /// Network name.
    #[arg(value_parser = NonEmpty::new())]
    pub net: String,
    /// The lease's IP address, or its client's MAC.
    #[arg(value_parser = NonEmpty::new())]
    pub lease: String,
    /// The network's project (default: `default`, or the token's).
    #[arg(long)]
    pub project: Option<String>,
}

/// `lanyard node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes: each registered daemon while its etcd lease lives.
    List(OutputArg),
}

/// `lanyard manager ...`
#[derive(Debug, Subcommand)]
pub enum ManagerCommand {
    /// The VLAN manager: every project gets its own VLAN, bridge and subnet.
    #[command(subcommand)]
    Vlan(VlanManagerCommand),
}

/// `lanyard manager vlan ...`
#[derive(Debug, Subcommand)]
pub enum VlanManagerCommand {
    /// Configure it: the trunk, the VLANs and the supernet projects' networks come from.
    Set {
        /// The trunk every project's VLAN rides on.
        #[arg(long)]
        uplink: String,
        /// VLAN ids to hand out, FIRST-LAST (e.g. 100-999).
        #[arg(long)]
        vlans: String,
        /// The block projects' subnets are cut from (e.g. 10.0.0.0/16).
        #[arg(long)]
        supernet: String,
        /// Prefix length of each project's subnet (e.g. 24).
        #[arg(long)]
        prefix: u8,
        /// Mode of the projects' networks: nat (default), route, host-only or isolated.
        #[arg(long)]
        mode: Option<String>,
        /// subif (default) or filtering.
        #[arg(long)]
        vlan_backend: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show the configuration.
    Show(OutputArg),
}

/// A CLI failure: one line for the user and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon refused the request.
    #[error("{message}")]
    Refused {
        /// Its message.
        message: String,
        /// Its error kind.
        kind: String,
    },
    /// The daemon could not be reached.
    #[error("cannot reach the lanyard daemon at {path}: {source} (is `lanyard daemon` running? set --socket or LANYARD_SOCKET)")]
    Unreachable {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The socket is there but this user may not use it.
    #[error("permission denied on {path}: run as root or as a member of the socket's group{group}")]
    PermissionDenied {
        /// Socket path.
        path: String,
        /// " (NAME)" when the socket's group is known.
        group: String,
    },
    /// The daemon went away (or stopped answering) before a complete answer.
    #[error("the lanyard daemon at {path} {what}: did it exit? See its log; a change asked for may or may not have been made")]
    Disconnected {
        /// Socket path.
        path: String,
        /// What happened.
        what: String,
    },
    /// The daemon's answer made no sense.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// --url or --ca is wrong.
    #[error("{0}")]
    Usage(String),
    /// No TLS session with the daemon's listener.
    #[error("no TLS connection with the lanyard daemon at {url}: {why}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// Whoever read standard output stopped reading (`| head`): not an
    /// error to report, the program just ends.
    #[error("standard output was closed")]
    OutputClosed,
}

impl CliError {
    /// Exit code: 2 bad input, 3 not found, 4 conflict, 5 daemon unreachable
    /// (also when it dies mid-request), 6 not allowed (a bad or missing
    /// token, an operation for the admin only), 0 when the reader of standard output
    /// went away, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Refused { kind, .. } => match kind.as_str() {
                "invalid" => 2,
                "not_found" => 3,
                "conflict" => 4,
                "unauthorized" | "forbidden" => 6,
                _ => 1,
            },
            CliError::Unreachable { .. }
            | CliError::PermissionDenied { .. }
            | CliError::Disconnected { .. }
            | CliError::Tls { .. } => 5,
            CliError::Usage(_) => 2,
            CliError::OutputClosed => 0,
            CliError::Protocol(_) | CliError::Output(_) => 1,
        }
    }
}

/// How long the CLI waits for the daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the CLI finds the daemon and who it is there.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// The unix socket.
    pub socket: PathBuf,
    /// A project's token, sent with every request.
    pub token: Option<String>,
    /// The daemon's TLS listener, `https://HOST:PORT`, instead of the socket.
    pub url: Option<String>,
    /// The CA that signed the listener's certificate (PEM).
    pub ca: Option<PathBuf>,
}

/// A minimal HTTP/1.1 client over the daemon's unix socket, or over TLS to
/// its TCP listener: the same few lines of HTTP either way, so the answers
/// and their errors are read by one parser.
pub struct Client {
    socket: PathBuf,
    token: Option<String>,
    remote: Option<Remote>,
}

/// A TLS listener to talk to.
struct Remote {
    url: String,
    host: String,
    port: u16,
    name: rustls::pki_types::ServerName<'static>,
    config: std::sync::Arc<rustls::ClientConfig>,
}

/// Anything the client reads answers from.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Remote {
    /// `https://HOST:PORT` trusting the CA in `ca`.
    fn new(url: &str, ca: Option<&std::path::Path>) -> Result<Remote, CliError> {
        use rustls::pki_types::pem::PemObject;
        let usage = |m: String| CliError::Usage(m);
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| usage(format!("--url {url:?}: give https://HOST:PORT (the listener serves TLS only)")))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| usage(format!("--url {url:?}: give https://HOST:PORT")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| usage(format!("--url {url:?}: {host:?} is no host name: {e}")))?;
        let ca = ca.ok_or_else(|| {
            usage("--url needs --ca PEM (or LANYARD_CA): the CA that signed the daemon's certificate".into())
        })?;
        let bad_ca = |why: String| usage(format!("cannot read the CA certificate {}: {why}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| bad_ca(e.to_string()))? {
            roots.add(cert.map_err(|e| bad_ca(e.to_string()))?).map_err(|e| bad_ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad_ca("no CERTIFICATE block in it".into()));
        }
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| usage(format!("TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Remote { url: url.to_string(), host, port, name, config: std::sync::Arc::new(config) })
    }

    /// A TLS session, its handshake done (so that a certificate the CA did
    /// not sign is told as such, not as a daemon that went away).
    fn connect(&self) -> Result<Box<dyn Stream>, CliError> {
        let tcp = std::net::TcpStream::connect((self.host.as_str(), self.port))
            .map_err(|source| CliError::Unreachable { path: self.url.clone(), source })?;
        let set = tcp.set_read_timeout(Some(ANSWER_TIMEOUT)).and_then(|()| tcp.set_write_timeout(Some(ANSWER_TIMEOUT)));
        set.map_err(|source| CliError::Unreachable { path: self.url.clone(), source })?;
        let conn = rustls::ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| CliError::Tls { url: self.url.clone(), why: e.to_string() })?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| CliError::Tls { url: self.url.clone(), why: e.to_string() })?;
        }
        Ok(Box::new(tls))
    }
}

impl Client {
    /// A client for `socket`, as the admin.
    pub fn new(socket: PathBuf) -> Self {
        Client { socket, token: None, remote: None }
    }

    /// A client for `endpoint`.
    pub fn of(endpoint: Endpoint) -> Result<Self, CliError> {
        let remote = match &endpoint.url {
            Some(url) => Some(Remote::new(url, endpoint.ca.as_deref())?),
            None => None,
        };
        Ok(Client { socket: endpoint.socket, token: endpoint.token, remote })
    }

    /// Where the daemon is, for messages.
    fn place(&self) -> String {
        match &self.remote {
            Some(r) => r.url.clone(),
            None => self.socket.display().to_string(),
        }
    }

    fn connect(&self) -> Result<Box<dyn Stream>, CliError> {
        match &self.remote {
            Some(r) => r.connect(),
            None => {
                let s = UnixStream::connect(&self.socket).map_err(|e| self.connect_error(e))?;
                s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| self.connect_error(e))?;
                Ok(Box::new(s))
            }
        }
    }

    /// The `Authorization` header line, if the client has a token.
    fn authorization(&self) -> Result<String, CliError> {
        match &self.token {
            None => Ok(String::new()),
            // Checked here: the line goes into the request as it is.
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(format!("Authorization: Bearer {t}\r\n"))
            }
            Some(_) => Err(CliError::Refused {
                message: "the token (--token or LANYARD_TOKEN) is empty or has characters no token has".into(),
                kind: "invalid".into(),
            }),
        }
    }

    fn connect_error(&self, source: std::io::Error) -> CliError {
        let path = self.socket.display().to_string();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            use std::os::unix::fs::MetadataExt;
            let group = std::fs::metadata(&self.socket)
                .ok()
                .and_then(|m| group_name(m.gid()))
                .map(|g| format!(" ({g})"))
                .unwrap_or_default();
            return CliError::PermissionDenied { path, group };
        }
        CliError::Unreachable { path, source }
    }

    /// Sends one request and returns the decoded JSON body (Null for 204).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let auth = self.authorization()?;
        let mut stream = self.connect()?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: lanyard\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        );
        let sent = stream.write_all(req.as_bytes()).and_then(|()| stream.flush());
        // Read even if sending failed: the daemon may have answered (and
        // closed) before reading all of a request it refuses.
        let mut raw = Vec::new();
        let received = stream.read_to_end(&mut raw);
        let (status, body) = match parse_response(&raw, received.is_ok()) {
            Ok(answer) => answer,
            Err(Answer::Bad(why)) => return Err(CliError::Protocol(why)),
            Err(Answer::Incomplete(why)) => {
                let timed_out = |e: &std::io::Error| {
                    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                };
                let what = match (received, sent) {
                    (Err(e), _) if timed_out(&e) => format!("did not answer within {} s", ANSWER_TIMEOUT.as_secs()),
                    (received, sent) => {
                        let how = if raw.is_empty() {
                            "without answering".to_string()
                        } else {
                            format!("mid-answer ({why})")
                        };
                        let cause = received.err().or(sent.err()).map(|e| format!(" ({e})")).unwrap_or_default();
                        format!("closed the connection {how}{cause}")
                    }
                };
                return Err(CliError::Disconnected { path: self.place(), what });
            }
        };
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| CliError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&body))))?
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(CliError::Refused {
                message: value["error"].as_str().map(String::from).unwrap_or_else(|| format!("HTTP {status}: {value}")),
                kind: value["kind"].as_str().unwrap_or("internal").to_string(),
            })
        }
    }
}

/// The number of group `name` (a name in /etc/group, or a number).
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The name of group `gid`, from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

/// Why bytes from the daemon are not an answer.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// They stop before the answer is complete (the daemon went away).
    Incomplete(String),
    /// They are not HTTP.
    Bad(String),
}

/// Parses a whole HTTP/1.1 response; `clean_eof` says whether the
/// connection ended normally (then a body without a length runs to the end).
fn parse_response(raw: &[u8], clean_eof: bool) -> Result<(u16, Vec<u8>), Answer> {
    if raw.is_empty() {
        return Err(Answer::Incomplete("no answer at all".into()));
    }
    let prefix = &raw[..raw.len().min(5)];
    if !b"HTTP/".starts_with(prefix) {
        return Err(Answer::Bad(format!("not HTTP: {:?}", String::from_utf8_lossy(&raw[..raw.len().min(40)]))));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Answer::Incomplete(format!("{} bytes of header", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status: u16 = head
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Answer::Bad(format!("bad status line in {head:?}")))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        return Ok((status, dechunk(body)?));
    }
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| Answer::Bad(format!("bad Content-Length {len:?}")))?;
        if body.len() < len {
            return Err(Answer::Incomplete(format!("{} of {len} bytes of body", body.len())));
        }
        return Ok((status, body[..len].to_vec()));
    }
    if !clean_eof {
        return Err(Answer::Incomplete("a body without a length".into()));
    }
    Ok((status, body.to_vec()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, Answer> {
    let cut = || Answer::Incomplete("a chunked body cut short".into());
    let bad = || Answer::Bad("bad chunked body".into());
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(cut)?;
        let size = std::str::from_utf8(&b[..eol]).map_err(|_| bad())?.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(cut)?);
        b = b.get(size + 2..).ok_or_else(cut)?;
    }
}

/// Writes `text` to standard output. A reader that went away (`| head`) is
/// [`CliError::OutputClosed`], never a panic as with `print!`.
fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::OutputClosed),
        Err(e) => Err(CliError::Output(e)),
    }
}

/// clap's message for a command line it refused, as one line: clap spreads
/// it over several (the missing arguments, a "did you mean" tip, the
/// allowed values, then a usage block), and the first alone names nothing
/// ("the following required arguments were not provided:"). The usage
/// block is left out; `--help` has it.
pub fn usage_error_line(clap_text: &str) -> String {
    let mut lines = clap_text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let rest: Vec<&str> = lines.map(|l| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).unwrap_or(l)).collect();
    match (rest.is_empty(), first.strip_suffix(':')) {
        (true, _) => first.to_string(),
        // "...not provided: --vm <VM>, --net <NET>"
        (false, Some(head)) => format!("{head}: {}", rest.join(", ")),
        // "unexpected argument '--subnt' found (tip: a similar argument exists: '--subnet')"
        (false, None) => format!("{first} ({})", rest.join("; ")),
    }
}

/// One line on standard error, made [`printable`]; a closed standard error
/// is ignored (there is nowhere left to say anything).
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", printable(line));
}

/// `s` as it is safe to show on a terminal: printable ASCII as is, `\` as
/// `\\`, control characters (C0, DEL, C1) as `\xNN` (ESC is `\x1b`, a
/// newline `\x0a`), every other non-ASCII character as `\u{NNNN}`.
///
/// Guests choose their DHCP host names and client ids, and those reach
/// lanyard's tables: a raw ESC could recolour the terminal or move the
/// cursor, a newline could forge a row, and Unicode has invisible and
/// right-to-left characters that disguise text. Everything lanyard itself
/// prints in a table is ASCII, so nothing legitimate is escaped, and the
/// columns stay aligned (widths count bytes). `-o json` shows the exact
/// strings.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            '\0'..='\x1f' | '\x7f'..='\u{9f}' => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            _ => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
        }
    }
    out.into()
}

/// Prints rows as an aligned table in the style of `virsh net-list`; every
/// cell goes through [`printable`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| printable(h).into_owned()).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| printable(c).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(&format!(" {c}"));
            } else {
                s.push_str(&format!(" {c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let body: Vec<String> = rows.iter().map(|r| line(r.iter().map(String::as_str).collect())).collect();
    let head = line(headers.clone());
    let width = body.iter().chain([&head]).map(String::len).max().unwrap_or(0);
    let mut out = format!("{head}\n{}\n", "-".repeat(width));
    for l in body {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Formats unix seconds as UTC "YYYY-MM-DD HH:MM:SS".
pub fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn print(out: Output, value: &Value, render: impl FnOnce(&Value) -> String) -> Result<(), CliError> {
    match out {
        Output::Json => emit(&(serde_json::to_string_pretty(value).expect("a Value serializes") + "\n")),
        Output::Table => emit(&render(value)),
    }
}

/// `row` with the project's name first when `projects` is set.
fn with_project_cell(projects: bool, item: &Value, row: Vec<String>) -> Vec<String> {
    if projects {
        std::iter::once(s(&item["project"])).chain(row).collect()
    } else {
        row
    }
}

/// `headers` with "Project" first when `projects` is set.
fn project_headers<'a>(projects: bool, headers: &[&'a str]) -> Vec<&'a str> {
    let first = projects.then_some("Project");
    first.into_iter().chain(headers.iter().copied()).collect()
}

/// `net list`; with a Project column when `projects` (all projects listed).
fn network_rows(v: &Value, projects: bool) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let row = vec![
                s(&n["name"]),
                s(&n["state"]),
                if n["autostart"] == true { "yes".into() } else { "no".into() },
                s(&n["mode"]),
                s(&n["bridge"]),
                s(&n["subnet"]),
            ];
            with_project_cell(projects, n, row)
        })
        .collect();
    table(&project_headers(projects, &["Name", "State", "Autostart", "Mode", "Bridge", "Subnet"]), &rows)
}

/// `project list`: what each project owns.
fn project_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                s(&p["name"]),
                s(&p["networks"]),
                s(&p["ports"]),
                p["created"].as_u64().map(utc).unwrap_or_else(|| "-".into()),
                s(&p["description"]),
            ]
        })
        .collect();
    table(&["Name", "Networks", "Ports", "Created (UTC)", "Description"], &rows)
}

fn token_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| vec![s(&t["id"]), s(&t["project"]), t["created"].as_u64().map(utc).unwrap_or_default(), s(&t["name"])])
        .collect();
    table(&["ID", "Project", "Created", "Name"], &rows)
}

fn project_detail(p: &Value) -> String {
    let fields = [
        ("Name", s(&p["name"])),
        ("Description", s(&p["description"])),
        ("Created", p["created"].as_u64().map(|t| format!("{} UTC", utc(t))).unwrap_or_else(|| "-".into())),
        ("Networks", s(&p["networks"])),
        ("Ports", s(&p["ports"])),
        ("Egress", s(&p["egress"])),
        ("Allows", {
            let allows: Vec<String> = p["allows"].as_array().into_iter().flatten().map(s).collect();
            if allows.is_empty() {
                "-".into()
            } else {
                allows.join(", ")
            }
        }),
    ];
    details(&fields, 13)
}

/// A key/value view (`net show`, `status`): keys padded to `width`, values
/// through [`printable`].
fn details(fields: &[(&str, String)], width: usize) -> String {
    fields.iter().map(|(k, v)| format!("{:<width$}{}\n", format!("{k}:"), printable(v))).collect()
}

fn network_detail(n: &Value) -> String {
    let range = format!("{}-{}", s(&n["dhcp_range"]["first"]), s(&n["dhcp_range"]["last"]));
    let fields = [
        ("Name", s(&n["name"])),
        ("Project", s(&n["project"])),
        ("State", s(&n["state"])),
        ("Autostart", if n["autostart"] == true { "yes".into() } else { "no".into() }),
        ("Mode", s(&n["mode"])),
        ("Bridge", s(&n["bridge"])),
        ("Subnet", s(&n["subnet"])),
        ("Gateway", s(&n["gateway"])),
        ("DHCP range", range),
        ("Domain", s(&n["domain"])),
        ("Lease time", format!("{} s", n["lease_time"].as_u64().unwrap_or(crate::dhcp::DEFAULT_LEASE_SECS.into()))),
        ("MTU", s(&n["mtu"])),
        ("Uplink", s(&n["uplink"])),
        ("VLAN", s(&n["vlan"])),
        ("VLAN backend", s(&n["vlan_backend"])),
        ("Overlay", s(&n["overlay"])),
        ("Manager", s(&n["manager"])),
        ("Bridge owner", if n["adopted"] == true { "given (adopted)".into() } else { "lanyard".into() }),
    ];
    details(&fields, 14)
}

fn vlan_manager_detail(m: &Value) -> String {
    let fields = [
        ("Uplink", s(&m["uplink"])),
        ("VLANs", format!("{}-{}", s(&m["first_vlan"]), s(&m["last_vlan"]))),
        ("Supernet", s(&m["supernet"])),
        ("Prefix", format!("/{}", s(&m["prefix"]))),
        ("Mode", s(&m["mode"])),
        ("VLAN backend", s(&m["vlan_backend"])),
    ];
    details(&fields, 14)
}

fn status_detail(v: &Value) -> String {
    let h = &v["self_healing"];
    let last = match (h["last"].as_str(), h["last_at"].as_u64()) {
        (Some(what), Some(at)) => format!("{} UTC: {what}", utc(at)),
        _ => "-".to_string(),
    };
    let started = match (v["started_at"].as_u64(), v["uptime_secs"].as_u64()) {
        (Some(at), Some(up)) => format!("{} (since {} UTC)", uptime(up), utc(at)),
        _ => "-".to_string(),
    };
    let rows = [
        ("Version", s(&v["version"])),
        ("Uptime", started),
        ("Store", s(&v["store"])),
        ("Projects", s(&v["projects"])),
        ("Networks", format!("{} ({} active)", s(&v["networks"]), s(&v["active_networks"]))),
        ("Ports", s(&v["ports"])),
        ("Leases", s(&v["leases"])),
        ("Floating IPs", s(&v["floating_ips"])),
        ("Repairs", format!("{} in {} heals", s(&h["repairs"]), s(&h["heals"]))),
        ("Last repair", last),
        ("Heal failures", s(&h["failures"])),
        ("Forward drops", {
            let c = &v["coexistence"];
            let chains: Vec<String> = c["forward_drops"].as_array().into_iter().flatten().map(s).collect();
            let docker =
                if c["docker_user_rules"] == true { " (DOCKER-USER lets lanyard's traffic through)" } else { "" };
            if chains.is_empty() {
                "none".to_string()
            } else {
                format!("{}{docker}", chains.join(", "))
            }
        }),
        ("DHCP handler panics", s(&v["dhcp_handler_panics"])),
    ];
    details(&rows, 22)
}

/// `secs` as `3d 4h 5m 6s`, largest unit first, zero units left out
/// (`0s` for none).
fn uptime(secs: u64) -> String {
    let parts = [(secs / 86_400, "d"), (secs / 3600 % 24, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    let shown: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, u)| format!("{n}{u}")).collect();
    if shown.is_empty() {
        "0s".into()
    } else {
        shown.join(" ")
    }
}

/// `port list`; with a Project column when `projects` (all projects listed).
fn port_rows(v: &Value, projects: bool) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let model = if p["type"] == "tap" { "virtio" } else { "-" };
            let row = vec![
                s(&p["id"]),
                s(&p["vm"]),
                s(&p["ifname"]),
                s(&p["type"]),
                s(&p["net"]),
                model.into(),
                s(&p["mac"]),
                s(&p["ip"]),
                s(&p["vlan"]),
            ];
            with_project_cell(projects, p, row)
        })
        .collect();
    table(&project_headers(projects, &["ID", "VM", "Interface", "Type", "Source", "Model", "MAC", "IP", "VLAN"]), &rows)
}

/// One port (`port create`, `port show`): its row and, for a TAP, the
/// QEMU arguments that use it.
fn port_detail(p: &Value) -> String {
    let mut t = port_rows(&Value::Array(vec![p.clone()]), false);
    if let Some(q) = p["qemu_args"].as_str() {
        t.push_str(&format!("\nQEMU: {}\n", printable(q)));
    }
    t
}

fn lease_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                l["expiry"].as_u64().map(utc).unwrap_or_else(|| "-".into()),
                s(&l["mac"]),
                s(&l["ip"]),
                s(&l["hostname"]),
                s(&l["client_id"]),
                s(&l["kind"]),
            ]
        })
        .collect();
    table(&["Expiry (UTC)", "MAC", "IP", "Hostname", "Client-ID", "Kind"], &rows)
}

fn node_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let name = if n["local"] == true { format!("{} (this)", s(&n["name"])) } else { s(&n["name"]) };
            vec![
                name,
                s(&n["state"]),
                s(&n["underlay_ip"]),
                n["ports"].as_u64().unwrap_or(0).to_string(),
                n["started"].as_u64().map(utc).unwrap_or_else(|| "-".into()),
                s(&n["version"]),
            ]
        })
        .collect();
    table(&["Name", "State", "Underlay", "Ports", "Started (UTC)", "Version"], &rows)
}

fn bridge_rows(v: &Value) -> String {
    // brctl show: bridge name, bridge id, STP enabled, interfaces (one per line).
    let mut rows = Vec::new();
    for b in v.as_array().into_iter().flatten() {
        // A VLAN network's bridge: each interface is an access port of it.
        let vlan = b["vlan"].as_u64().map(|v| format!(" (vlan {v})")).unwrap_or_default();
        // A VLAN-filtering bridge: each interface with its own VLAN table.
        let own = |i: &Value| match b["vlans"][s(i)].as_str() {
            Some(t) => format!(" (vlans {t})"),
            None => vlan.clone(),
        };
        let ifs: Vec<String> =
            b["interfaces"].as_array().into_iter().flatten().map(|i| format!("{}{}", s(i), own(i))).collect();
        let first = ifs.first().cloned().unwrap_or_default();
        rows.push(vec![s(&b["name"]), s(&b["bridge_id"]), s(&b["stp"]), first]);
        for i in ifs.iter().skip(1) {
            rows.push(vec![String::new(), String::new(), String::new(), i.clone()]);
        }
    }
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| printable(c).into_owned()).collect()).collect();
    let mut out = String::new();
    let headers = ["bridge name", "bridge id", "STP enabled", "interfaces"];
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let fmt = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(&format!("{c:<w$}\t", w = widths[i]));
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&fmt(&headers));
    for r in &rows {
        out.push_str(&fmt(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

/// A query string value: [`pct`], and `&`, `=` and `+` too.
fn query_value(s: &str) -> String {
    pct(s).replace('&', "%26").replace('=', "%3D").replace('+', "%2B")
}

fn pct(s: &str) -> String {
    // Path segments are validated names, but encode the few characters that
    // would change the request's meaning anyway.
    s.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23").replace(' ', "%20")
}

/// The JSON body a command sends, for those whose body comes from their
/// flags alone. Every field must be one the API declares: request bodies
/// refuse unknown fields.
fn body_of(cmd: &Command) -> Option<Value> {
    match cmd {
        Command::Net(NetCommand::Create {
            name,
            mode,
            manager,
            subnet,
            uplink,
            vlan,
            vlan_backend,
            gateway,
            dhcp_range,
            bridge,
            mtu,
            domain,
            lease_time,
            overlay,
            autostart,
            project,
            out: _,
        }) => Some(json!({
            "name": name, "mode": mode.clone().unwrap_or_default(), "manager": manager,
            "subnet": subnet.clone().unwrap_or_default(), "uplink": uplink,
            "vlan": vlan, "vlan_backend": vlan_backend,
            "gateway": gateway, "dhcp_range": dhcp_range, "bridge": bridge, "mtu": mtu, "domain": domain,
            "autostart": autostart, "project": project, "lease_time": lease_time, "overlay": overlay,
        })),
        Command::Project(ProjectCommand::Create { name, description, out: _ }) => {
            Some(json!({ "name": name, "description": description }))
        }
        Command::Project(ProjectCommand::Token(TokenCommand::Create { name, .. })) => Some(json!({ "name": name })),
        Command::Net(NetCommand::Autostart { disable, .. }) => Some(json!({ "enabled": !disable })),
        Command::Net(NetCommand::Edit(e)) => {
            let autostart = match (e.autostart, e.no_autostart) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let body = json!({
                "autostart": autostart, "domain": e.domain, "dhcp_range": e.dhcp_range, "lease_time": e.lease_time,
                "subnet": e.subnet, "gateway": e.gateway, "mode": e.mode, "bridge": e.bridge, "mtu": e.mtu,
            });
            // Only what was given: an absent field changes nothing.
            let given: serde_json::Map<String, Value> = body
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some(Value::Object(given))
        }
        Command::Manager(ManagerCommand::Vlan(VlanManagerCommand::Set {
            uplink,
            vlans,
            supernet,
            prefix,
            mode,
            vlan_backend,
            out: _,
        })) => Some(json!({
            "uplink": uplink, "vlans": vlans, "supernet": supernet, "prefix": prefix,
            "mode": mode, "vlan_backend": vlan_backend,
        })),
        Command::Port(PortCommand::Create {
            net,
            trunk,
            vm,
            port_type,
            netns,
            ifname,
            mac,
            ip,
            owner,
            group,
            project,
            no_spoof_check,
            out: _,
        }) => {
            // A trunk port without --native: listed under its first network,
            // with no untagged frames.
            let untagged = trunk.is_none() || net.is_some();
            let listed = net.clone().or_else(|| trunk.as_ref().and_then(|t| t.first().cloned())).unwrap_or_default();
            let mut body = json!({
                "net": listed, "vm": vm, "type": port_type, "netns": netns, "ifname": ifname,
                "mac": mac, "ip": ip, "owner": owner, "group": group, "project": project,
            });
            if let Some(t) = trunk {
                body["trunk"] = json!(t);
                body["untagged"] = json!(untagged);
            }
            if *no_spoof_check {
                body["spoof_check"] = json!(false);
            }
            Some(body)
        }
        _ => None,
    }
}

/// What `qemu-ifup` registers: the TAP QEMU created, adopted as a port.
fn ifup_body(project: Option<&str>, net: &str, vm: &str, tap: &str, mac: &str) -> Value {
    json!({ "project": project, "net": net, "vm": vm, "type": "tap", "adopt": tap, "mac": mac })
}

/// `path` with `?project=P` (when there is a project to name).
fn with_project(path: &str, project: Option<&str>) -> String {
    match project {
        Some(p) => format!("{path}?project={}", query_value(p)),
        None => path.to_string(),
    }
}

/// " in project P", or nothing for the default project.
fn in_project(project: Option<&str>) -> String {
    match project {
        Some(p) if p != DEFAULT_PROJECT => format!(" in project {}", printable(p)),
        _ => String::new(),
    }
}

/// Runs a client command against the daemon.
pub fn run_client(endpoint: Endpoint, cmd: Command) -> Result<(), CliError> {
    // Made from the clap definitions alone: no daemon needed.
    match &cmd {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man(dir.as_deref()),
        Command::Openapi => return emit(&crate::openapi::document_json()),
        _ => {}
    }
    let c = Client::of(endpoint)?;
    let body = body_of(&cmd);
    match cmd {
        Command::Daemon { .. } => unreachable!("handled by main"),
        Command::Completions { .. } | Command::Man { .. } | Command::Openapi => unreachable!("handled above"),
        Command::Net(NetCommand::Create { out, .. }) => {
            let v = c.call("POST", "/v1/networks", body.as_ref())?;
            print(out.output, &v, network_detail)?;
        }
        Command::Project(ProjectCommand::Create { out, .. }) => {
            let v = c.call("POST", "/v1/projects", body.as_ref())?;
            print(out.output, &v, project_detail)?;
        }
        Command::Project(ProjectCommand::List { out }) => {
            let v = c.call("GET", "/v1/projects", None)?;
            print(out.output, &v, project_rows)?;
        }
        Command::Project(ProjectCommand::Show { name, out }) => {
            let v = c.call("GET", &format!("/v1/projects/{}", pct(&name)), None)?;
            print(out.output, &v, project_detail)?;
        }
        Command::Project(ProjectCommand::Set { name, egress, out }) => {
            let body = json!({ "egress": egress });
            let v = c.call("POST", &format!("/v1/projects/{}/egress", pct(&name)), Some(&body))?;
            print(out.output, &v, project_detail)?;
        }
        Command::Project(ProjectCommand::Allow { name, grant, out }) => {
            let v = c.call("POST", &format!("/v1/projects/{}/allow", pct(&name)), Some(&grant.body()))?;
            print(out.output, &v, project_detail)?;
        }
        Command::Project(ProjectCommand::Deny { name, grant, out }) => {
            let v = c.call("POST", &format!("/v1/projects/{}/deny", pct(&name)), Some(&grant.body()))?;
            print(out.output, &v, project_detail)?;
        }
        Command::Project(ProjectCommand::Delete { name }) => {
            c.call("DELETE", &format!("/v1/projects/{}", pct(&name)), None)?;
            emit(&format!("Project {} deleted\n", printable(&name)))?;
        }
        Command::Project(ProjectCommand::Token(TokenCommand::Create { project, out, .. })) => {
            let v = c.call("POST", &format!("/v1/projects/{}/tokens", pct(&project)), body.as_ref())?;
            print(out.output, &v, |t| {
                format!(
                    "Token {} for project {} (shown once, keep it secret):\n{}\n",
                    printable(&s(&t["id"])),
                    printable(&s(&t["project"])),
                    printable(&s(&t["token"]))
                )
            })?;
        }
        Command::Project(ProjectCommand::Token(TokenCommand::List { project, out })) => {
            let v = c.call("GET", &format!("/v1/projects/{}/tokens", pct(&project)), None)?;
            print(out.output, &v, token_rows)?;
        }
        Command::Project(ProjectCommand::Token(TokenCommand::Delete { project, id })) => {
            c.call("DELETE", &format!("/v1/projects/{}/tokens/{}", pct(&project), pct(&id)), None)?;
            emit(&format!("Token {} of project {} deleted\n", printable(&id), printable(&project)))?;
        }
        Command::Net(NetCommand::List { all, project, out }) => {
            let mut v = c.call("GET", &with_project("/v1/networks", project.as_deref()), None)?;
            if let (false, Some(list)) = (all, v.as_array_mut()) {
                list.retain(|n| n["state"] == "active");
            }
            // All projects (the admin's view): which project each row is.
            print(out.output, &v, |v| network_rows(v, project.is_none()))?;
        }
        Command::Net(NetCommand::Show { name, project, out }) => {
            let v = c.call("GET", &with_project(&format!("/v1/networks/{}", pct(&name)), project.as_deref()), None)?;
            print(out.output, &v, network_detail)?;
        }
        Command::Net(NetCommand::Delete { name, project, force }) => {
            let path = with_project(&format!("/v1/networks/{}", pct(&name)), project.as_deref());
            let path =
                if force { format!("{path}{}force=true", if path.contains('?') { '&' } else { '?' }) } else { path };
            c.call("DELETE", &path, None)?;
            emit(&format!("Network {}{} deleted\n", printable(&name), in_project(project.as_deref())))?;
        }
        Command::Net(NetCommand::Edit(NetEdit { name, project, out, .. })) => {
            let path = with_project(&format!("/v1/networks/{}", pct(&name)), project.as_deref());
            let v = c.call("PATCH", &path, body.as_ref())?;
            print(out.output, &v, network_detail)?;
        }
        Command::Net(NetCommand::Start { name, project }) => {
            c.call("POST", &with_project(&format!("/v1/networks/{}/start", pct(&name)), project.as_deref()), None)?;
            emit(&format!("Network {}{} started\n", printable(&name), in_project(project.as_deref())))?;
        }
        Command::Net(NetCommand::Stop { name, project }) => {
            c.call("POST", &with_project(&format!("/v1/networks/{}/stop", pct(&name)), project.as_deref()), None)?;
            emit(&format!("Network {}{} stopped\n", printable(&name), in_project(project.as_deref())))?;
        }
        Command::Net(NetCommand::Autostart { name, disable, project }) => {
            let path = with_project(&format!("/v1/networks/{}/autostart", pct(&name)), project.as_deref());
            c.call("POST", &path, body.as_ref())?;
            let how = if disable { "unmarked as" } else { "marked as" };
            emit(&format!("Network {}{} {how} autostarted\n", printable(&name), in_project(project.as_deref())))?;
        }
        Command::Port(PortCommand::Create { out, .. }) => {
            let v = c.call("POST", "/v1/ports", body.as_ref())?;
            print(out.output, &v, port_detail)?;
        }
        Command::Port(PortCommand::Show { id, out }) => {
            let v = c.call("GET", &format!("/v1/ports/{}", pct(&id)), None)?;
            print(out.output, &v, port_detail)?;
        }
        Command::Port(PortCommand::CreateBatch { file, out }) => {
            let text = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t).map(|_| t)
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| CliError::Refused {
                message: format!("cannot read {}: {e}", file.display()),
                kind: "invalid".into(),
            })?;
            let specs: Value = serde_json::from_str(&text).map_err(|e| CliError::Refused {
                message: format!("{} is not a JSON array of port specs: {e}", file.display()),
                kind: "invalid".into(),
            })?;
            let v = c.call("POST", "/v1/ports/batch", Some(&specs))?;
            print(out.output, &v, |v| port_rows(v, true))?;
        }
        Command::Port(PortCommand::List { vm, net, project, out }) => {
            let mut q = Vec::new();
            if let Some(v) = vm {
                q.push(format!("vm={}", query_value(&v)));
            }
            if let Some(n) = net {
                q.push(format!("net={}", query_value(&n)));
            }
            if let Some(p) = &project {
                q.push(format!("project={}", query_value(p)));
            }
            let path = if q.is_empty() { "/v1/ports".to_string() } else { format!("/v1/ports?{}", q.join("&")) };
            let v = c.call("GET", &path, None)?;
            print(out.output, &v, |v| port_rows(v, project.is_none()))?;
        }
        Command::Port(PortCommand::Delete { id }) => {
            c.call("DELETE", &format!("/v1/ports/{}", pct(&id)), None)?;
            emit(&format!("Port {} deleted\n", printable(&id)))?;
        }
        Command::Port(PortCommand::Config { id, format, iso, force, out }) => {
            // A query value: `&`, `=` and `+` would change the query's meaning.
            let value = pct(&format).replace('&', "%26").replace('=', "%3D").replace('+', "%2B");
            let v = c.call("GET", &format!("/v1/ports/{}/config?format={value}", pct(&id)), None)?;
            let seed: crate::cloudinit::Seed = serde_json::from_value(v.clone())
                .map_err(|e| CliError::Protocol(format!("not a cloud-init seed ({e}): {v}")))?;
            if let Some(path) = &iso {
                write_seed_iso(&seed, path, force)?;
            }
            match (out.output, &iso) {
                (Output::Json, _) => print(out.output, &v, |_| String::new())?,
                (Output::Table, Some(path)) => emit(&format!(
                    "Port {}: cloud-init seed written to {} (ISO 9660, label {})\n",
                    printable(&id),
                    printable(&path.display().to_string()),
                    crate::cloudinit::VOLUME_LABEL
                ))?,
                (Output::Table, None) => emit(&seed_text(&seed))?,
            }
        }
        Command::Lease(LeaseCommand::List { net, project, out }) => {
            let v =
                c.call("GET", &with_project(&format!("/v1/networks/{}/leases", pct(&net)), project.as_deref()), None)?;
            print(out.output, &v, lease_rows)?;
        }
        Command::Node(NodeCommand::List(out)) => {
            let v = c.call("GET", "/v1/nodes", None)?;
            print(out.output, &v, node_rows)?;
        }
        Command::Lease(LeaseCommand::Delete(LeaseDelete { net, lease, project })) => {
            let path = format!("/v1/networks/{}/leases/{}", pct(&net), pct(&lease));
            c.call("DELETE", &with_project(&path, project.as_deref()), None)?;
            emit(&format!(
                "Lease {} on {}{} deleted\n",
                printable(&lease),
                printable(&net),
                in_project(project.as_deref())
            ))?;
        }
        Command::Manager(ManagerCommand::Vlan(VlanManagerCommand::Set { out, .. })) => {
            let v = c.call("PUT", "/v1/managers/vlan", body.as_ref())?;
            print(out.output, &v, vlan_manager_detail)?;
        }
        Command::Manager(ManagerCommand::Vlan(VlanManagerCommand::Show(out))) => {
            let v = c.call("GET", "/v1/managers/vlan", None)?;
            print(out.output, &v, vlan_manager_detail)?;
        }
        Command::QemuIfup { ifname, net, project, vm, mac } => {
            let qemu_args = parent_cmdline();
            let mac =
                mac.or_else(|| guest_mac_from_qemu_args(&qemu_args, &ifname)).ok_or_else(|| CliError::Refused {
                    message: format!(
                        "cannot tell the guest MAC on {ifname}: give mac= on QEMU's NIC, or set LANYARD_MAC"
                    ),
                    kind: "invalid".into(),
                })?;
            let vm = vm.or_else(|| vm_name_from_qemu_args(&qemu_args)).unwrap_or_else(|| ifname.clone());
            let v = c.call("POST", "/v1/ports", Some(&ifup_body(project.as_deref(), &net, &vm, &ifname, &mac)))?;
            note(&format!(
                "lanyard: {ifname} attached to {net}{} as port {} ({} {})",
                in_project(project.as_deref()),
                s(&v["id"]),
                s(&v["mac"]),
                s(&v["ip"])
            ));
        }
        Command::QemuIfdown { ifname } => {
            let ports = c.call("GET", "/v1/ports", None)?;
            let id = ports
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["ifname"] == ifname.as_str())
                .and_then(|p| p["id"].as_str().map(String::from));
            match id {
                Some(id) => {
                    c.call("DELETE", &format!("/v1/ports/{}", pct(&id)), None)?;
                    note(&format!("lanyard: port {id} on {ifname} removed"));
                }
                None => note(&format!("lanyard: no port on {ifname}; nothing to do")),
            }
        }
        Command::Bridges(out) => {
            let v = c.call("GET", "/v1/bridges", None)?;
            print(out.output, &v, bridge_rows)?;
        }
        Command::Status(out) => {
            let v = c.call("GET", "/v1/status", None)?;
            print(out.output, &v, status_detail)?;
        }
        Command::Topo { net, project, format, out } => {
            let t = topo::gather(&c, net.as_deref(), project.as_deref())?;
            let format = if out.output == Output::Json { topo::TopoFormat::Json } else { format };
            emit(&match format {
                topo::TopoFormat::Text => topo::text(&t),
                topo::TopoFormat::Dot => topo::dot(&t),
                topo::TopoFormat::Svg => topo::svg(&t),
                topo::TopoFormat::Json => {
                    serde_json::to_string_pretty(&t).map_err(|e| CliError::Protocol(e.to_string()))? + "\n"
                }
            })?;
        }
        Command::Fip(cmd) => fip::run(&c, cmd)?,
        Command::Import(cmd) => import::run(&c, cmd)?,
        Command::Export { output } => declare::export(&c, output)?,
        Command::Apply { file, dry_run } => declare::apply(&c, &import::read_text(&file)?, dry_run)?,
        Command::Net(NetCommand::Host(cmd)) => hosts::run(&c, cmd)?,
        Command::Net(NetCommand::Forward(cmd)) => forwards::run(&c, cmd)?,
    }
    Ok(())
}

/// A seed as two files, each under a `# NAME` line: what `port config`
/// prints. lanyard's YAML is printable ASCII (every value quoted and
/// escaped) and is printed as is; anything else is escaped as
/// [`printable`] does.
fn seed_text(seed: &crate::cloudinit::Seed) -> String {
    let text = format!("# network-config\n{}\n# meta-data\n{}", seed.network_config, seed.meta_data);
    text.chars()
        .map(
            |c| {
                if c == '\n' || (' '..='~').contains(&c) {
                    c.to_string()
                } else {
                    printable(&c.to_string()).into_owned()
                }
            },
        )
        .collect()
}

/// Writes `seed` as a `cidata` ISO at `path`: never over an existing file
/// unless `force`.
fn write_seed_iso(seed: &crate::cloudinit::Seed, path: &std::path::Path, force: bool) -> Result<(), CliError> {
    let shown = path.display().to_string();
    let image = seed.iso().map_err(|e| CliError::Refused {
        message: format!("cannot make the seed ISO: {e}"),
        kind: "internal".into(),
    })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let written = options.open(path).and_then(|mut f| f.write_all(&image).and_then(|()| f.sync_all()));
    written.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CliError::Refused {
            message: format!("{shown} already exists; give --force to overwrite it"),
            kind: "conflict".into(),
        },
        _ => CliError::Refused { message: format!("cannot write {shown}: {e}"), kind: "internal".into() },
    })
}

/// The command line of the process that ran us (QEMU, for `qemu-ifup`).
fn parent_cmdline() -> Vec<String> {
    let ppid = std::os::unix::process::parent_id();
    std::fs::read(format!("/proc/{ppid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

fn opts_of(arg: &str) -> Vec<(&str, &str)> {
    arg.split(',').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect()
}

fn opt<'a>(opts: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Finds the guest MAC of the NIC that uses TAP `ifname` in QEMU's
/// arguments: `-nic tap,...,mac=M` or `-netdev tap,id=X,...` with
/// `-device ...,netdev=X,mac=M`. A netdev without `ifname=` matches when it
/// is the only tap netdev (the kernel then picked the name).
pub fn guest_mac_from_qemu_args(args: &[String], ifname: &str) -> Option<String> {
    let values = |flag: &str| -> Vec<&str> {
        args.windows(2).filter(|w| w[0] == flag || w[0] == format!("-{flag}")).map(|w| w[1].as_str()).collect()
    };
    let taps: Vec<Vec<(&str, &str)>> = values("-netdev")
        .into_iter()
        .chain(values("-nic"))
        .map(opts_of)
        .filter(|o| o.first().is_some_and(|(k, _)| *k == "tap"))
        .collect();
    let tap = taps.iter().find(|o| opt(o, "ifname") == Some(ifname)).or_else(|| {
        if taps.len() == 1 && opt(&taps[0], "ifname").is_none() {
            taps.first()
        } else {
            None
        }
    })?;
    if let Some(mac) = opt(tap, "mac") {
        return Some(mac.to_string());
    }
    let id = opt(tap, "id")?;
    values("-device")
        .into_iter()
        .map(opts_of)
        .find(|d| opt(d, "netdev") == Some(id))
        .and_then(|d| opt(&d, "mac").map(String::from))
}

/// QEMU's `-name NAME` or `-name guest=NAME,...`.
pub fn vm_name_from_qemu_args(args: &[String]) -> Option<String> {
    let v = args.windows(2).find(|w| w[0] == "-name" || w[0] == "--name")?[1].as_str();
    let o = opts_of(v);
    opt(&o, "guest").or_else(|| o.first().map(|(k, _)| *k)).filter(|n| !n.is_empty()).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn finds_guest_mac_in_qemu_args() {
        let a = args("qemu -name guest=web1,debug-threads=on -netdev tap,id=n0,ifname=tap7,script=/x -device virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc");
        assert_eq!(guest_mac_from_qemu_args(&a, "tap7").as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(guest_mac_from_qemu_args(&a, "tap8"), None);
        assert_eq!(vm_name_from_qemu_args(&a).as_deref(), Some("web1"));
        let a = args("qemu -name db -netdev tap,id=x,script=/x -device e1000,netdev=x,mac=52:54:00:00:00:09");
        assert_eq!(guest_mac_from_qemu_args(&a, "tap0").as_deref(), Some("52:54:00:00:00:09"));
        assert_eq!(vm_name_from_qemu_args(&a).as_deref(), Some("db"));
        let a = args("qemu -nic tap,ifname=t1,mac=52:54:00:00:00:01,model=virtio");
        assert_eq!(guest_mac_from_qemu_args(&a, "t1").as_deref(), Some("52:54:00:00:00:01"));
    }

    fn parse(line: &str) -> Command {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}")).command
    }

    #[test]
    fn request_bodies_send_only_declared_fields() {
        // The API refuses unknown fields: every field the CLI sends, with
        // every flag given, must be one the request type declares.
        let body = body_of(&parse(
            "lanyard net create n1 --mode bridge --subnet 10.0.0.0/24 --uplink eth0 --gateway 10.0.0.1 \
             --dhcp-range 10.0.0.100-10.0.0.200 --bridge br9 --mtu 9000 --domain lan --autostart \
             --lease-time 600 -o json",
        ))
        .unwrap();
        let spec: crate::model::NetworkSpec = serde_json::from_value(body).unwrap();
        assert_eq!(spec.lease_time, Some(600));
        assert_eq!((spec.uplink.as_deref(), spec.mtu, spec.autostart), (Some("eth0"), Some(9000), Some(true)));
        let body = body_of(&parse(
            "lanyard port create --net n1 --vm vm1 --type veth --netns ns1 --ifname eth0 --mac 52:54:00:00:00:01 \
             --ip 10.0.0.5 --owner qemu --group kvm -o json",
        ))
        .unwrap();
        let spec: crate::model::PortSpec = serde_json::from_value(body).unwrap();
        assert_eq!((spec.netns.as_deref(), spec.group.as_deref()), (Some("ns1"), Some("kvm")));
        let spec: crate::model::PortSpec =
            serde_json::from_value(ifup_body(Some("blue"), "n1", "vm1", "tap0", "52:54:00:00:00:01")).unwrap();
        assert_eq!((spec.adopt.as_deref(), spec.project.as_deref()), (Some("tap0"), Some("blue")));
        let body = body_of(&parse("lanyard project create blue --description team -o json")).unwrap();
        let spec: crate::model::ProjectSpec = serde_json::from_value(body).unwrap();
        assert_eq!((spec.name.as_str(), spec.description.as_deref()), ("blue", Some("team")));
        let body = body_of(&parse("lanyard net create n1 --mode nat --subnet 10.0.0.0/24 --project blue")).unwrap();
        let spec: crate::model::NetworkSpec = serde_json::from_value(body).unwrap();
        assert_eq!(spec.project.as_deref(), Some("blue"));
        let body = body_of(&parse("lanyard port create --net n1 --vm v --project blue")).unwrap();
        let spec: crate::model::PortSpec = serde_json::from_value(body).unwrap();
        assert_eq!(spec.project.as_deref(), Some("blue"));
        assert_eq!(spec.spoof_check, None, "checked unless asked otherwise");
        let body = body_of(&parse("lanyard port create --net n1 --vm router --no-spoof-check")).unwrap();
        let spec: crate::model::PortSpec = serde_json::from_value(body).unwrap();
        assert_eq!(spec.spoof_check, Some(false));
        let body = body_of(&parse(
            "lanyard net edit n1 --no-autostart --domain lan --dhcp-range 10.0.0.100-10.0.0.200 --lease-time 600 --mtu 9000",
        ))
        .unwrap();
        let patch: crate::model::NetworkPatch = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(
            (patch.autostart, patch.lease_time, patch.mtu),
            (Some(false), Some(600), Some(json!("9000"))),
            "{body}"
        );
        assert_eq!(body_of(&parse("lanyard net edit n1")).unwrap(), json!({}), "nothing given, nothing sent");
        for line in ["lanyard net autostart n1", "lanyard net autostart n1 --disable"] {
            let a: crate::api::Autostart = serde_json::from_value(body_of(&parse(line)).unwrap()).unwrap();
            assert_eq!(a.enabled, !line.ends_with("--disable"));
        }
    }

    #[test]
    fn port_config_prints_two_files_and_keeps_existing_isos() {
        let seed = crate::cloudinit::Seed {
            network_config: "version: 2\n".into(),
            meta_data: "local-hostname: \"vm\\x1b\"\n".into(),
            user_data: "#cloud-config\n{}\n".into(),
        };
        assert_eq!(seed_text(&seed), "# network-config\nversion: 2\n\n# meta-data\nlocal-hostname: \"vm\\x1b\"\n");
        let odd = crate::cloudinit::Seed { meta_data: "a\x1bb\n".into(), ..seed.clone() };
        assert!(seed_text(&odd).ends_with("a\\x1bb\n"), "{}", seed_text(&odd));
        let path = std::env::temp_dir().join(format!("lanyard-unit-seed-{}.iso", std::process::id()));
        let _ = std::fs::remove_file(&path);
        write_seed_iso(&seed, &path, false).unwrap();
        let e = write_seed_iso(&seed, &path, false).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert_eq!(e.to_string(), format!("{} already exists; give --force to overwrite it", path.display()));
        std::fs::write(&path, b"x").unwrap();
        write_seed_iso(&seed, &path, true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), seed.iso().unwrap());
        std::fs::remove_file(&path).unwrap();
        let e = write_seed_iso(&seed, std::path::Path::new("/nonexistent/dir/seed.iso"), false).unwrap_err();
        assert!(e.to_string().starts_with("cannot write /nonexistent/dir/seed.iso: "), "{e}");
        let Command::Port(PortCommand::Config { format, iso, force, .. }) = parse("lanyard port config abc") else {
            panic!("not port config")
        };
        assert_eq!((format.as_str(), iso, force), ("cloud-init", None, false));
        assert!(Cli::try_parse_from(["lanyard", "port", "config", "abc", "--force"]).is_err(), "--force needs --iso");
    }

    #[test]
    fn listings_of_all_projects_name_the_project_first() {
        let nets = json!([
            {"project": "blue", "name": "private", "state": "active", "autostart": false, "mode": "nat", "bridge": "lybr1", "subnet": "10.2.0.0/24"},
            {"project": "default", "name": "private", "state": "active", "autostart": true, "mode": "nat", "bridge": "lybr0", "subnet": "10.1.0.0/24"},
        ]);
        assert_eq!(
            network_rows(&nets, true),
            " Project   Name      State    Autostart   Mode   Bridge   Subnet\n\
             ---------------------------------------------------------------------\n \
             blue      private   active   no          nat    lybr1    10.2.0.0/24\n \
             default   private   active   yes         nat    lybr0    10.1.0.0/24\n"
        );
        assert!(network_rows(&nets, false).starts_with(" Name "));
        let ports = json!([{"project": "blue", "id": "0011aabb", "vm": "v", "ifname": "ly0011aabb", "type": "tap", "net": "private", "mac": "52:54:00:00:00:01", "ip": "10.2.0.2"}]);
        let t = port_rows(&ports, true);
        assert!(t.starts_with(" Project   ID ") && t.contains("\n blue      0011aabb "), "{t}");
        assert!(port_rows(&ports, false).starts_with(" ID "));
        assert_eq!(with_project("/v1/networks/n", Some("a&b")), "/v1/networks/n?project=a%26b");
        assert_eq!(with_project("/v1/networks", None), "/v1/networks");
    }

    #[test]
    fn refused_command_lines_keep_what_clap_names_on_one_line() {
        let line = |argv: &str| {
            let e = Cli::try_parse_from(argv.split_whitespace()).expect_err(argv);
            usage_error_line(&e.to_string())
        };
        let l = line("lanyard port create --net n1");
        assert_eq!(l, "the following required arguments were not provided: --vm <VM>");
        let l = line("lanyard net create n1 --mode nat --subnt 10.0.0.0/24");
        assert!(l.starts_with("unexpected argument '--subnt' found (tip: ") && l.contains("'--subnet'"), "{l}");
        let l = line("lanyard net list -o xml");
        assert!(l.contains("'xml'") && l.contains("possible values: table, json"), "{l}");
        let l = line("lanyard net lst");
        assert!(l.contains("'lst'") && l.contains("'list'"), "{l}");
        for argv in ["lanyard port create --net n1", "lanyard net list -o xml", "lanyard net lst"] {
            assert_eq!(line(argv).lines().count(), 1, "{argv}");
        }
    }

    #[test]
    fn the_version_names_the_commit() {
        let e = Cli::try_parse_from(["lanyard", "--version"]).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("lanyard {} (commit ", env!("CARGO_PKG_VERSION"))), "{text}");
        let commit = env!("LANYARD_COMMIT");
        assert!(commit == "unknown" || commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
    }

    #[test]
    fn tables_align() {
        let t = table(&["Name", "State"], &[vec!["default".into(), "active".into()]]);
        assert_eq!(t, " Name      State\n-----------------\n default   active\n");
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_obey() {
        assert_eq!(printable("web-1.example"), "web-1.example");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
        for (raw, shown) in [
            ("a\x1b[31mb", "a\\x1b[31mb"),
            ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
            ("row\nforged", "row\\x0aforged"),
            ("cr\roverwrite", "cr\\x0doverwrite"),
            ("tab\there", "tab\\x09here"),
            ("nul\0", "nul\\x00"),
            ("del\x7f", "del\\x7f"),
            ("csi\u{9b}31m", "csi\\x9b31m"),
            ("rtl\u{202e}gpj.exe", "rtl\\u{202e}gpj.exe"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("café", "caf\\u{00e9}"),
            ("back\\x1b", "back\\\\x1b"),
        ] {
            assert_eq!(printable(raw), shown, "{raw:?}");
        }
    }

    /// Whether `text` could only print characters: no byte but printable
    /// ASCII and the newlines that end lines.
    fn inert(text: &str) -> bool {
        text.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\n')
    }

    #[test]
    fn uptime_reads_largest_unit_first() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(3600), "1h");
        assert_eq!(uptime(2 * 86_400 + 3 * 3600 + 4 * 60 + 5), "2d 3h 4m 5s");
    }

    #[test]
    fn hostile_guest_strings_cannot_escape_their_cell() {
        let hostile = "a\x1b[31mb\n 52:54:00:00:00:99   10.0.0.99   forged\r\u{9b}2J\u{202e}";
        let leases = json!([
            {"expiry": 0, "mac": "52:54:00:00:00:01", "ip": "10.0.0.2", "hostname": hostile, "client_id": hostile, "kind": "dynamic"},
            {"expiry": 0, "mac": "52:54:00:00:00:02", "ip": "10.0.0.3", "hostname": "ok", "client_id": null, "kind": "dynamic"},
        ]);
        let t = lease_rows(&leases);
        assert!(inert(&t), "{t:?}");
        assert_eq!(t.lines().count(), 4, "a header, a rule and two rows: {t}");
        assert!(t.contains("a\\x1b[31mb\\x0a 52:54:00:00:00:99"), "{t}");
        // The columns after the hostile cell stay aligned.
        let lines: Vec<&str> = t.lines().collect();
        let kind_col = lines[0].find("Kind").unwrap();
        assert!(lines[2].len() > kind_col && lines[3].len() > kind_col, "{t}");
        assert_eq!(&lines[2][kind_col..], "dynamic", "{t}");
        assert_eq!(&lines[3][kind_col..], "dynamic", "{t}");
        let ports = json!([{"id": "0011aabb", "vm": hostile, "ifname": "ly0011aabb", "type": "veth", "net": "n", "mac": "52:54:00:00:00:01", "ip": null}]);
        let t = port_rows(&ports, true);
        assert!(inert(&t) && t.lines().count() == 3, "{t:?}");
        let t = network_detail(&json!({"name": hostile, "domain": hostile, "dhcp_range": {"first": hostile}}));
        assert!(inert(&t) && t.lines().count() == 18, "{t:?}");
        let t = project_rows(&json!([{"name": "p", "description": hostile, "created": 0, "networks": 1, "ports": 0}]));
        assert!(inert(&t) && t.lines().count() == 3, "{t:?}");
        let t = project_detail(&json!({"name": "p", "description": hostile}));
        assert!(inert(&t) && t.lines().count() == 7, "{t:?}");
        let t = status_detail(&json!({"self_healing": {"last": hostile, "last_at": 0}, "store": hostile}));
        assert!(inert(&t) && t.lines().count() == 13, "{t:?}");
        let t = bridge_rows(
            &json!([{"name": "lybr0", "bridge_id": "8000.1", "stp": "no", "interfaces": [hostile, "ly1"]}]),
        );
        // brctl separates its columns with tabs; the cells hold none.
        assert!(inert(&t.replace('\t', " ")) && t.lines().count() == 3, "{t:?}");
        assert!(t.lines().all(|l| l.matches('\t').count() == 3), "{t:?}");
        let t = network_rows(&json!([{"name": "n", "state": "active", "mode": hostile, "project": hostile}]), true);
        assert!(inert(&t) && t.lines().count() == 3, "{t:?}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_305_600), "2026-11-22 00:00:00");
    }

    #[test]
    fn http_parsing() {
        let (st, body) = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}", true).unwrap();
        assert_eq!((st, body.as_slice()), (201, &b"{}"[..]));
        let (_, body) =
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n", true).unwrap();
        assert_eq!(body, b"[]");
        // An answer that arrived whole counts even if the connection was then reset.
        let (st, _) = parse_response(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\n{}", false).unwrap();
        assert_eq!(st, 413);
        let (_, body) = parse_response(b"HTTP/1.1 200 OK\r\n\r\n[1]", true).unwrap();
        assert_eq!(body, b"[1]");
    }

    #[test]
    fn a_daemon_that_goes_away_mid_answer_is_told_apart_from_nonsense() {
        let incomplete: [&[u8]; 7] = [
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1,2",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n[1,",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n[1,",
        ];
        for raw in incomplete {
            let r = parse_response(raw, false);
            assert!(matches!(r, Err(Answer::Incomplete(_))), "{:?}: {r:?}", String::from_utf8_lossy(raw));
        }
        for raw in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let r = parse_response(raw, true);
            assert!(matches!(r, Err(Answer::Bad(_))), "{:?}: {r:?}", String::from_utf8_lossy(raw));
        }
        let e = CliError::Disconnected { path: "/s".into(), what: "closed the connection".into() };
        assert_eq!(e.exit_code(), 5);
        let e = CliError::PermissionDenied { path: "/run/lanyard/lanyard.sock".into(), group: " (root)".into() };
        assert_eq!(e.exit_code(), 5);
        assert_eq!(
            e.to_string(),
            "permission denied on /run/lanyard/lanyard.sock: run as root or as a member of the socket's group (root)"
        );
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}

//! Performing one [`Op`]: the requests each takes, in order, each
//! acknowledged before the next, and the undoing of a half-made link when
//! a later step of its creation fails, so that every op is all or nothing.

use std::os::fd::AsRawFd;

use super::messages::{self, Request};
use super::observe::link_index;
use super::socket::{NlError, RouteSocket};
use super::{netns, sysctl, NetlinkDriver};
use crate::dataplane::tun;
use crate::kernel::link::{TapSpec, VethSpec};
use crate::kernel::{KernelError, Op};

fn send(socket: &mut RouteSocket, req: Request) -> Result<(), NlError> {
    socket.ack(req.message, req.flags)
}

/// The group links go to for a batch delete: random and above 2^24, far
/// from the small numbers administrators give groups (`/etc/iproute2/group`),
/// so `delete group` can meet no link but these.
fn scratch_group() -> u32 {
    rand::random::<u32>() | 0x0100_0000
}

/// Deletes `names` in one kernel batch: each joins a scratch group, then the
/// group is deleted. A link already gone is skipped; if anything else
/// fails, the links put in the group go back to group 0 (lanyard's links
/// are always in the default group) and nothing is deleted.
fn delete_links(socket: &mut RouteSocket, names: &[String]) -> Result<(), NlError> {
    if let [one] = names {
        return match send(socket, messages::delete_link(one)) {
            Err(e) if e.errno == Some(libc::ENODEV) => Ok(()),
            other => other,
        };
    }
    let group = scratch_group();
    let mut grouped: Vec<&str> = Vec::with_capacity(names.len());
    let back = |socket: &mut RouteSocket, grouped: &[&str]| {
        for name in grouped {
            let _ = send(socket, messages::set_group(name, 0));
        }
    };
    for name in names {
        match send(socket, messages::set_group(name, group)) {
            Ok(()) => grouped.push(name),
            Err(e) if e.errno == Some(libc::ENODEV) => {}
            Err(e) => {
                back(socket, &grouped);
                return Err(e);
            }
        }
    }
    if grouped.is_empty() {
        return Ok(());
    }
    send(socket, messages::delete_group(group)).inspect_err(|_| back(socket, &grouped))
}

/// Finishes the creation of link `name` with `rest`; if that fails, deletes
/// the link again so that nothing of the op remains, and says so when even
/// that fails.
fn finish_create(
    socket: &mut RouteSocket,
    name: &str,
    rest: impl FnOnce(&mut RouteSocket) -> Result<(), NlError>,
) -> Result<(), NlError> {
    let Err(err) = rest(socket) else { return Ok(()) };
    match send(socket, messages::delete_link(name)) {
        Ok(()) => Err(err),
        Err(undo) => Err(NlError {
            errno: err.errno,
            message: format!("{} (and deleting the half-made {name} failed: {})", err.message, undo.message),
        }),
    }
}

fn tun_error(err: tun::TunError) -> NlError {
    NlError { errno: err.errno(), message: err.to_string() }
}

fn create_tap(socket: &mut RouteSocket, t: &TapSpec) -> Result<(), NlError> {
    // Names first: an unknown user must fail before anything exists.
    let owner = t.owner.as_deref().map(tun::user_id).transpose().map_err(tun_error)?;
    let group = t.group.as_deref().map(tun::group_id).transpose().map_err(tun_error)?;
    tun::create_persistent_tap(&t.name, owner, group).map_err(tun_error)?;
    finish_create(socket, &t.name, |s| send(s, messages::configure_tap(&t.name, t.mac, t.mtu, &t.alias)))
}

/// The pair, then the peer up in its namespace, then the alias. The peer
/// cannot come up in the creating request: veth configures the peer's
/// flags before it links the two ends, and opening an unlinked end fails
/// (ENOTCONN). Nor can the ends be swapped (the namespaced end created as
/// the main device, whose flags are applied after linking): older kernels
/// (Debian 12's 6.1 among them) look the main device's name up in the
/// caller's namespace, so a peer named like a host link (eth0) would be
/// refused.
fn create_veth(socket: &mut RouteSocket, v: &VethSpec) -> Result<(), NlError> {
    let netns = netns::open(&v.peer_netns)?;
    send(socket, messages::create_veth(v, netns.as_raw_fd()))?;
    // Deleting the host side deletes the peer too, wherever it is.
    finish_create(socket, &v.name, |s| {
        let mut there = netns::socket_in(&netns)?;
        send(&mut there, messages::set_up(&v.peer_name, true))
            .map_err(|e| e.about(&format!("set {} up", v.peer_name)))?;
        send(s, messages::set_alias(&v.name, &v.alias))
    })
}

fn perform(socket: &mut RouteSocket, op: &Op) -> Result<(), NlError> {
    match op {
        Op::CreateBridge { name, mac, mtu, alias } => {
            send(socket, messages::create_bridge(name, *mac, *mtu))?;
            finish_create(socket, name, |s| send(s, messages::set_alias(name, alias)))
        }
        Op::CreateTap(t) => create_tap(socket, t),
        Op::CreateVeth(v) => create_veth(socket, v),
        Op::CreateVlan { name, parent, id, alias } => {
            let parent = link_index(socket, parent)?;
            send(socket, messages::create_vlan(name, parent, *id))?;
            finish_create(socket, name, |s| send(s, messages::set_alias(name, alias)))
        }
        Op::CreateVxlan(v) => {
            let dev = v.dev.as_deref().map(|d| link_index(socket, d)).transpose()?;
            send(socket, messages::create_vxlan(v, dev))?;
            finish_create(socket, &v.name, |s| send(s, messages::set_alias(&v.name, &v.alias)))
        }
        Op::DeleteLink { name } => send(socket, messages::delete_link(name)),
        Op::DeleteLinks { names } => delete_links(socket, names),
        Op::AddAddress { link, addr } | Op::DelAddress { link, addr } => {
            let index = link_index(socket, link)?;
            send(socket, messages::address(index, *addr, matches!(op, Op::AddAddress { .. })))
        }
        Op::SetMaster { link, master, .. } => {
            let master = match master {
                Some(m) => link_index(socket, m)?,
                None => 0,
            };
            send(socket, messages::set_master(link, master))
        }
        Op::SetUp { link, up } => send(socket, messages::set_up(link, *up)),
        Op::SetMtu { link, mtu, .. } => send(socket, messages::set_mtu(link, *mtu)),
        Op::SetMac { link, mac, .. } => send(socket, messages::set_mac(link, *mac)),
        Op::ReplaceRoute { link, route } => {
            let index = link_index(socket, link)?;
            send(socket, messages::replace_route(index, route))
        }
        Op::DelRoute { link, route } => {
            let index = link_index(socket, link)?;
            send(socket, messages::delete_route(index, route))
        }
        Op::SetVlanFiltering { bridge, on } => send(socket, messages::set_vlan_filtering(bridge, *on)),
        Op::AddBridgeVlan { link, vid, pvid, untagged, self_ } => {
            let index = link_index(socket, link)?;
            send(socket, messages::bridge_vlan(index, *vid, *pvid, *untagged, *self_, true))
        }
        Op::DelBridgeVlan { link, entry, self_ } => {
            let index = link_index(socket, link)?;
            send(socket, messages::bridge_vlan(index, entry.vid, false, false, *self_, false))
        }
        Op::AddFdb { link, mac, dst } | Op::DelFdb { link, mac, dst } => {
            let index = link_index(socket, link)?;
            send(socket, messages::fdb(index, *mac, *dst, matches!(op, Op::AddFdb { .. })))
        }
        Op::AddNeighbour { link, ip, mac } | Op::DelNeighbour { link, ip, mac } => {
            let index = link_index(socket, link)?;
            send(socket, messages::neighbour(index, *ip, *mac, matches!(op, Op::AddNeighbour { .. })))
        }
        Op::SetForwarding { on } => sysctl::set_ip_forward(*on).map_err(|e| NlError::io(&e)),
    }
}

impl NetlinkDriver {
    /// Performs one operation completely or not at all: one acknowledged
    /// request per step (plus look-ups of link indexes), and a creation
    /// whose later step fails deletes what it created. The error names the
    /// op and carries the kernel's errno, its text and the kernel's own
    /// explanation when it gave one.
    pub fn apply_op(&self, op: &Op) -> Result<(), KernelError> {
        let mut socket = self.socket();
        perform(&mut socket, op).map_err(|e| KernelError::Op { op: op.to_string(), errno: e.errno, message: e.message })
    }
}

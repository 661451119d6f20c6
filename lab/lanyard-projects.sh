#!/bin/sh
# Lab-host test of nova's VLAN manager (run by lab/host-run inside the VM:
# Debian's cloud kernel has 802.1Q). The administrator configures it once;
# two projects' first ports, naming no network, get each project its own
# VLAN, bridge and subnet with DHCP and NAT:
#
#   a1 ── project a: vlan100 10.0.0.0/24 (VLAN 100) ─┐
#                                                    ├─ trunk0 ── wire: trunk0.100 (far100 10.0.0.99)
#   b1 ── project b: vlan101 10.0.1.0/24 (VLAN 101) ─┘            trunk0.101 (far101 10.0.1.99)
#
# Each guest leases from its project's network; the far end of the trunk
# reaches a1 only on VLAN 100 and b1 only on VLAN 101 (the tags on the
# wire); a1 and b1 cannot reach each other although both are nat networks
# on one host; a restart keeps both allocations; a third project is refused
# with "no free VLAN"; deleting a project frees its VLAN for the next one.
set -eu
# shellcheck source=lab/initramfs/common.sh
. /lab/common.sh

SOCK=/run/lanyard/lanyard.sock
fail() {
    echo "projects: FAIL $*"
    [ -r /tmp/daemon.log ] && { echo "--- lanyard daemon log ---"; cat /tmp/daemon.log; }
    exit 1
}
step() { echo "projects: $* (uptime $(uptime_s))"; }
ly() { lanyard --socket "$SOCK" "$@"; }
reaches() { ip netns exec "$1" ping -c 2 -W 1 "$2" > /dev/null 2>&1; }
json_str() { sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n1; }
start_daemon() {
    LANYARD_LOG=info lanyard daemon --socket "$SOCK" --state-dir /var/lib/lanyard >> /tmp/daemon.log 2>&1 &
    dpid=$!
    lab_wait 300 ly net list > /dev/null 2>&1 || fail "lanyard daemon did not answer"
}
start_daemon
step "daemon answers"

ip netns add wire
ip link add trunk0 type veth peer name trunk0 netns wire
ip link set trunk0 up
ip -n wire link set trunk0 up
for v in 100 101; do
    ip netns add "far$v"
    ip -n wire link add link trunk0 name "trunk0.$v" type vlan id "$v"
    ip -n wire link set "trunk0.$v" netns "far$v"
    ip -n "far$v" link set "trunk0.$v" up
done
ip -n far100 addr add 10.0.0.99/24 dev trunk0.100
ip -n far101 addr add 10.0.1.99/24 dev trunk0.101

ly manager vlan set --uplink trunk0 --vlans 100-101 --supernet 10.0.0.0/16 --prefix 24 > /dev/null \
    || fail "manager vlan set"
for p in a b c; do ly project create "$p" > /dev/null || fail "project create $p"; done
for p in a b; do
    ip netns add "${p}1"
    ly port create --project "$p" --vm "${p}1" --type veth --netns "${p}1" --ifname eth0 -o json > "/tmp/${p}1.json" \
        || fail "port create in project $p without --net"
    ip netns exec "${p}1" udhcpc -f -q -n -t 5 -T 2 -A 1 -i eth0 -s /lab/udhcpc.script > "/tmp/udhcpc-$p.log" 2>&1 \
        || { cat "/tmp/udhcpc-$p.log"; fail "${p}1 got no lease from its project's network"; }
done
a1=$(json_str ip /tmp/a1.json); b1=$(json_str ip /tmp/b1.json)
say "nets-json $(ly net list -o json | tr -d '\n')"
say "a1 $a1 b1 $b1"
reaches far100 "$a1" || fail "VLAN 100's far end cannot reach a1: project a is not VLAN 100"
reaches far101 "$b1" || fail "VLAN 101's far end cannot reach b1: project b is not VLAN 101"
if reaches far100 "$b1"; then fail "VLAN 100's far end reaches b1"; fi
if reaches far101 "$a1"; then fail "VLAN 101's far end reaches a1"; fi
say "tags 100 and 101 on the wire"
if reaches a1 "$b1"; then fail "a1 reaches b1: projects are not apart"; fi
if reaches b1 "$a1"; then fail "b1 reaches a1: projects are not apart"; fi
reaches a1 10.0.0.1 || fail "a1 cannot reach its gateway"
say "projects apart"

ly net list -o json > /tmp/before.json
kill -TERM "$dpid"; wait "$dpid" || fail "daemon exit on SIGTERM"
start_daemon
ly net list -o json > /tmp/after.json
cmp -s /tmp/before.json /tmp/after.json || { diff /tmp/before.json /tmp/after.json; fail "the restart changed the allocations"; }
say "restart kept the allocations"

ip netns add c1
if ly port create --project c --vm c1 --type veth --netns c1 --ifname eth0 > /tmp/c1.out 2>&1; then
    fail "a third project got a network from a two-VLAN range"
fi
grep -q "no free VLAN in 100-101 on trunk0" /tmp/c1.out || { cat /tmp/c1.out; fail "the refusal does not say why"; }
say "third project refused: $(cat /tmp/c1.out)"
ly port delete "$(json_str id /tmp/b1.json)" > /dev/null || fail "port delete b1"
ly project delete b > /dev/null || fail "project delete b"
ip link show dev brvlan101 > /dev/null 2>&1 && fail "project b's bridge is left"
ly port create --project c --vm c1 --type veth --netns c1 --ifname eth0 -o json > /tmp/c1.json \
    || fail "project c gets no network after b freed VLAN 101"
[ "$(json_str net /tmp/c1.json)" = vlan101 ] || fail "project c did not get the freed VLAN 101: $(cat /tmp/c1.json)"
say "freed vlan reused"
kill -TERM "$dpid"; wait "$dpid" || fail "daemon exit on SIGTERM"
step "projects ok"

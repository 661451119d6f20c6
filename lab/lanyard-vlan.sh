#!/bin/sh
# Lab-host test of lanyard's VLAN networks (run by lab/host-run inside the
# VM: Debian's cloud kernel has the 802.1Q module this machine's kernel
# lacks). The seed's experiment, twice:
#
#   1. L2 only: networks v10 and v20 in bridge mode on VLANs 10 and 20 of
#      the trunk `trunk0`, all VMs with static addresses in 192.168.100.0/24:
#      vm1 and vm3 on VLAN 10, vm2 on VLAN 20.
#   2. lanyard's DHCP: v10 becomes a nat network (vm1 and vm3 lease their
#      ports' addresses from lanyard), v20 stays L2 with vm2 static.
#
# Each time vm3 reaches vm1, vm2 reaches neither, and nothing of vm2's ARP
# reaches VLAN 10 (vm1 learns no neighbour entry for vm2, VLAN 10's bridge
# never learns vm2's MAC: no frame of vm2 arrived there). The trunk's far end (namespace `wire`) takes the
# VLANs apart again with its own VLAN devices: a host there on VLAN 10
# answers vm1 and not vm2, one on VLAN 20 answers vm2 only, so the frames
# on the wire carry the tags 10 and 20. Deleting the networks removes every
# VLAN device and bridge and leaves the trunk as it was.
#
# Then a router VM on a trunk port carrying VLANs 10 and 20 reaches VMs on
# both and sees nothing of VLAN 30, which its port does not carry.
#
# VLAN_BACKEND (subif, the default, or filtering) chooses how lanyard makes
# the VLANs; the test body is the same, only the look at the kernel's
# objects differs: `subif` makes trunk0.10 in brvlan10, `filtering` one
# VLAN-aware bridge br-trunk0 with trunk0 as its trunk port, access ports
# in VLAN 10 untagged (and in no other), the gateway on br-trunk0.10. A
# daemon restart in the middle must rebuild nothing.
#
# Everything happens inside the throw-away VM. Fails (exit 1) at the first
# step that does not hold; tests/lab.rs checks the `LAB:` lines.
set -eu
# shellcheck source=lab/initramfs/common.sh
. /lab/common.sh

SOCK=/run/lanyard/lanyard.sock
SUBNET=192.168.100.0/24
B=${VLAN_BACKEND:-subif}
FBR=br-trunk0
say "backend $B"

fail() {
    echo "vlan: FAIL $*"
    if [ -r /tmp/daemon.log ]; then
        echo "--- lanyard daemon log ---"
        cat /tmp/daemon.log
        echo "--- end of daemon log ---"
    fi
    exit 1
}
step() { echo "vlan: $* (uptime $(uptime_s))"; }
ly() { lanyard --socket "$SOCK" "$@"; }
json_str() { sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n1; }
reaches() { ip netns exec "$1" ping -c 2 -W 1 "$2" > /dev/null 2>&1; }
# Whether VLAN $1's bridge learned MAC $2 (a frame from it arrived there).
learned() {
    if [ "$B" = subif ]; then
        bridge fdb show br "brvlan$1" | grep -qi "^$2 "
    else
        bridge fdb show br "$FBR" | grep -i "^$2 " | grep -q " vlan $1 "
    fi
}
# The VLAN table of $1 on the filtering bridge, one line: "10P 20" (P: pvid
# untagged); `bridge -c vlan show` would print ranges.
vlan_table() {
    bridge vlan show dev "$1" | awk -v d="$1" '
        { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/ && $i != d) { v = $i; f = "" }
          if ($0 ~ /PVID/) f = "P"; if (v != "") { out = out sep v f; sep = " "; v = "" } }
        END { print out }'
}
# The host's side of VLAN $1 (where its gateway lives).
gateway_dev() { if [ "$B" = subif ]; then echo "brvlan$1"; else echo "$FBR.$1"; fi; }
ifname_of() { json_str ifname "/tmp/$1.json"; }
# Checks that every port of $@ (VMs) is an access port of VLAN $V only.
access_ports() {
    [ "$B" = filtering ] || return 0
    for vm in "$@"; do
        t=$(vlan_table "$(ifname_of "$vm")")
        [ "$t" = "${V}P" ] || fail "$vm's port has VLAN table '$t', not an access port of VLAN $V only"
    done
}
start_daemon() {
    LANYARD_LOG=info lanyard daemon --socket "$SOCK" --state-dir /var/lib/lanyard >> /tmp/daemon.log 2>&1 &
    dpid=$!
    lab_wait 300 ly net list > /dev/null 2>&1 || fail "lanyard daemon did not answer within 30 s"
}
# Every link's index and name, and every bridge port's VLAN table: what a
# restart must leave as it is.
kernel_objects() { ip -o link show | awk '{print $1, $2}'; bridge vlan show; }

start_daemon
step "daemon answers"

# The trunk: trunk0 here, its far end in `wire`, which splits the VLANs
# into two hosts of its own (far10 on VLAN 10, far20 on VLAN 20).
ip netns add wire
ip link add trunk0 type veth peer name trunk0 netns wire
ip link set trunk0 up
ip -n wire link set trunk0 up
for v in 10 20; do
    ip netns add "far$v"
    ip -n wire link add link trunk0 name "trunk0.$v" type vlan id "$v"
    ip -n wire link set "trunk0.$v" netns "far$v"
    ip -n "far$v" link set "trunk0.$v" up
done
ip -n far10 addr add 192.168.100.99/24 dev trunk0.10
ip -n far20 addr add 192.168.100.98/24 dev trunk0.20
trunk_before=$(ip -br link show dev trunk0 | awk '{print $1, $2}')

# vm_port NET VM: a veth port into a new namespace VM; prints the port JSON.
vm_port() {
    ip netns add "$2" 2> /dev/null || true
    ly port create --net "$1" --vm "$2" --type veth --netns "$2" --ifname eth0 -o json > "/tmp/$2.json" \
        || fail "port create $2 on $1"
}

seed_experiment() {
    # $1: a label. vm1, vm3 on VLAN 10 and vm2 on VLAN 20 are configured.
    reaches vm3 192.168.100.10 || fail "$1: vm3 cannot reach vm1 on VLAN 10"
    say "$1 vm3 reaches vm1"
    reaches vm1 192.168.100.99 || fail "$1: vm1 cannot reach far10 across the trunk on VLAN 10"
    reaches vm2 192.168.100.98 || fail "$1: vm2 cannot reach far20 across the trunk on VLAN 20"
    say "$1 trunk carries tags 10 and 20"
    ip -n vm1 neigh flush all
    vm2_mac=$(ip netns exec vm2 cat /sys/class/net/eth0/address)
    if reaches vm2 192.168.100.10; then fail "$1: vm2 (VLAN 20) reaches vm1 (VLAN 10)"; fi
    if reaches vm2 192.168.100.30; then fail "$1: vm2 (VLAN 20) reaches vm3 (VLAN 10)"; fi
    if reaches vm2 192.168.100.99; then fail "$1: vm2 (VLAN 20) reaches far10 (VLAN 10)"; fi
    if reaches vm1 192.168.100.98; then fail "$1: vm1 (VLAN 10) reaches far20 (VLAN 20)"; fi
    if ip -n vm1 neigh show | grep -q '192.168.100.20 '; then fail "$1: vm2's ARP reached vm1"; fi
    if learned 10 "$vm2_mac"; then fail "$1: a frame of vm2 ($vm2_mac) arrived on VLAN 10's bridge"; fi
    learned 20 "$vm2_mac" || fail "$1: VLAN 20's bridge never saw vm2 ($vm2_mac): the check above proves nothing"
    say "$1 vm2 isolated: its ARP never reached VLAN 10"
}

# --- 1. L2 only, static addresses ---------------------------------------------
ly net create v10 --mode bridge --vlan 10 --uplink trunk0 --vlan-backend "$B" --subnet "$SUBNET" -o json > /tmp/v10.json \
    || fail "net create v10"
ly net create v20 --mode bridge --vlan 20 --uplink trunk0 --vlan-backend "$B" --subnet "$SUBNET" -o json > /tmp/v20.json \
    || fail "net create v20"
say "net-json $(tr -d '\n' < /tmp/v10.json)"
master_of() { ip -j link show dev "$1" | sed -n 's/.*"master":"\([^"]*\)".*/\1/p'; }
if [ "$B" = subif ]; then
    for dev in trunk0.10 trunk0.20 brvlan10 brvlan20; do
        ip link show dev "$dev" > /dev/null 2>&1 || fail "no $dev after net create"
    done
    [ "$(ip -br -4 addr show dev brvlan10 | awk '{print $3}')" = "" ] || fail "the L2 network's bridge has an address"
    ip -d link show dev trunk0.10 | grep -q 'vlan protocol 802.1Q id 10' || fail "trunk0.10 is not VLAN 10"
    [ "$(master_of trunk0.10)" = brvlan10 ] || fail "trunk0.10 not in brvlan10"
else
    ip -d link show dev "$FBR" | grep -q 'vlan_filtering 1' || fail "$FBR is not a VLAN-filtering bridge"
    [ "$(master_of trunk0)" = "$FBR" ] || fail "trunk0 is not $FBR's trunk port"
    [ "$(vlan_table trunk0)" = "1P 10 20" ] || fail "trunk0 carries '$(vlan_table trunk0)', not exactly VLANs 10 and 20 (and the host's untagged 1)"
    if ip link show dev "$FBR.10" > /dev/null 2>&1; then fail "an L2 network got a gateway device"; fi
fi
step "L2 networks on VLAN 10 and 20"
vm_port v10 vm1; vm_port v20 vm2; vm_port v10 vm3
V=10 access_ports vm1 vm3
V=20 access_ports vm2
ip -n vm1 addr add 192.168.100.10/24 dev eth0
ip -n vm2 addr add 192.168.100.20/24 dev eth0
ip -n vm3 addr add 192.168.100.30/24 dev eth0
seed_experiment static

# --- 2. v10 with lanyard's DHCP (nat), v20 L2 ----------------------------------
for p in vm1 vm3; do ly port delete "$(json_str id "/tmp/$p.json")" > /dev/null || fail "port delete $p"; done
ly net delete v10 --force > /dev/null || fail "net delete v10"
ip link show dev trunk0.10 > /dev/null 2>&1 && fail "trunk0.10 is left after net delete"
if [ "$B" = filtering ]; then
    [ "$(vlan_table trunk0)" = "1P 20" ] || fail "trunk0 still carries '$(vlan_table trunk0)' after VLAN 10's network went"
fi
ly net create v10 --mode nat --vlan 10 --uplink trunk0 --vlan-backend "$B" --subnet "$SUBNET" --gateway 192.168.100.1 \
    --dhcp-range 192.168.100.200-192.168.100.250 -o json > /tmp/v10.json || fail "net create v10 (nat)"
ip -br addr show dev "$(gateway_dev 10)" | grep -q ' 192.168.100.1/24' || fail "$(gateway_dev 10) lacks its gateway"
for p in vm1 vm3; do
    # The port's veth (eth0) went with the port delete above.
    ip=$([ "$p" = vm1 ] && echo 192.168.100.10 || echo 192.168.100.30)
    ly port create --net v10 --vm "$p" --type veth --netns "$p" --ifname eth0 --ip "$ip" -o json > "/tmp/$p.json" \
        || fail "port create $p on the nat network"
    ip netns exec "$p" udhcpc -f -q -n -t 5 -T 2 -A 1 -i eth0 -s /lab/udhcpc.script > "/tmp/udhcpc-$p.log" 2>&1 \
        || { cat "/tmp/udhcpc-$p.log"; fail "$p got no lease on VLAN 10"; }
    leased=$(ip -n "$p" -4 -o addr show dev eth0 | awk '{print $4}')
    [ "$leased" = "$ip/24" ] || fail "$p leased $leased, not its port's $ip"
    say "dhcp $p $leased"
done
V=10 access_ports vm1 vm3
reaches vm1 192.168.100.1 || fail "vm1 cannot reach its gateway"
seed_experiment dhcp

# A restart rebuilds nothing: same links (by index), same VLAN tables, and
# the guests keep their gateway.
kernel_objects > /tmp/before-restart
log_lines=$(wc -l < /tmp/daemon.log)
kill -TERM "$dpid"
wait "$dpid" || fail "lanyard daemon exited with an error on SIGTERM"
start_daemon
kernel_objects > /tmp/after-restart
if ! cmp -s /tmp/before-restart /tmp/after-restart; then
    diff /tmp/before-restart /tmp/after-restart || true
    fail "the restart changed the kernel's objects"
fi
tail -n "+$((log_lines + 1))" /tmp/daemon.log | grep -q "repaired" && fail "the restart repaired something"
reaches vm1 192.168.100.1 || fail "vm1 cannot reach its gateway after the restart"
say "restart rebuilt nothing"

# --- 3. a trunk port towards a router VM ---------------------------------------
# The router carries VLANs 10 and 20 tagged (no untagged network) and tries
# VLAN 30 too, which its port does not carry: vm4 there must not reach it.
ly net create v30 --mode bridge --vlan 30 --uplink trunk0 --vlan-backend "$B" --subnet "$SUBNET" -o json > /tmp/v30.json \
    || fail "net create v30"
vm_port v30 vm4
ip -n vm4 addr add 192.168.100.40/24 dev eth0
ip netns add router
ly port create --vm router --trunk v10,v20 --type veth --netns router --ifname eth0 -o json > /tmp/router.json \
    || fail "port create --trunk"
say "trunk-port-json $(tr -d '\n' < /tmp/router.json)"
ip netns exec router sysctl -q -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
for v in 10 20 30; do
    ip -n router link add link eth0 name "eth0.$v" type vlan id "$v"
    ip netns exec router sysctl -q -w "net.ipv4.conf.eth0/$v.rp_filter=0" 2> /dev/null || true
    ip -n router addr add "192.168.100.$((60 + v / 10))/24" dev "eth0.$v"
    ip -n router link set "eth0.$v" up
done
if [ "$B" = filtering ]; then
    t=$(vlan_table "$(ifname_of router)")
    [ "$t" = "10 20" ] || fail "the trunk port's VLAN table is '$t', not VLANs 10 and 20 tagged"
fi
ip netns exec router ping -c 2 -W 1 -I eth0.10 192.168.100.10 > /dev/null || fail "the router cannot reach vm1 on VLAN 10"
ip netns exec router ping -c 2 -W 1 -I eth0.20 192.168.100.20 > /dev/null || fail "the router cannot reach vm2 on VLAN 20"
say "trunk router reaches vlan 10 and 20"
router_mac=$(ip netns exec router cat /sys/class/net/eth0/address)
if ip netns exec vm4 ping -c 2 -W 1 192.168.100.63 > /dev/null 2>&1; then fail "vm4 (VLAN 30) reaches the router"; fi
if learned 30 "$router_mac"; then fail "a frame of the router arrived on VLAN 30, which its port does not carry"; fi
say "trunk router sees no vlan 30"
say "ports-json $(ly port list -o json | tr -d '\n')"
say "bridges-json $(ly bridges -o json | tr -d '\n')"
ly port list
ly bridges
ly port delete "$(json_str id /tmp/router.json)" > /dev/null || fail "port delete router"
ly port delete "$(json_str id /tmp/vm4.json)" > /dev/null || fail "port delete vm4"
ly net delete v30 --force > /dev/null || fail "net delete v30"

# --- cleanup: everything lanyard made goes, the trunk stays --------------------
ly net delete v10 --force > /dev/null || fail "net delete v10"
ly net delete v20 --force > /dev/null || fail "net delete v20"
for dev in trunk0.10 trunk0.20 trunk0.30 brvlan10 brvlan20 brvlan30 "$FBR" "$FBR.10"; do
    if ip link show dev "$dev" > /dev/null 2>&1; then fail "$dev is left after the networks were deleted"; fi
done
[ "$(ip -br link show dev trunk0 | awk '{print $1, $2}')" = "$trunk_before" ] || fail "the trunk changed"
[ -z "$(master_of trunk0)" ] || fail "the trunk is still in a bridge"
say "cleanup ok"
kill -TERM "$dpid"
wait "$dpid" || fail "lanyard daemon exited with an error on SIGTERM"
step "vlan ok"

#!/bin/sh
# Lab-host test: one VLAN across two hosts (run by lab/host-run inside the
# VM, on a kernel with 802.1Q). Two "hosts" (namespaces hosta and hostb),
# each with its own lanyard daemon and state, reach a "switch" (namespace
# sw, a plain bridge that passes tags through) by their NIC eth0, the trunk:
#
#   a1 ── hosta: v10 nat  192.168.10.0/24 VLAN 10 ─┐
#               v20 L2   192.168.20.0/24 VLAN 20  ├─ eth0 ─ sw ─ eth0 ─┬─ hostb: v10 L2 VLAN 10 ── b1 (DHCP from hosta)
#                                                  │                    └─        v20 L2 VLAN 20 ── b2 (static, 192.168.10.50)
#                                      probe: eth0.10 192.168.10.99, eth0.20 192.168.20.99 (sees tags)
#
# b1, on host B's L2 network for VLAN 10, leases from host A's nat network
# and reaches a1 and host A's gateway: VLAN 10 is one L2 segment across the
# hosts. b2 on VLAN 20, with an address in VLAN 10's subnet, reaches none
# of them. The probe on the switch answers on VLAN 10 and on VLAN 20 only
# through its VLAN devices: the frames on the wire carry the tags.
#
# VLAN_BACKEND (subif, the default, or filtering) chooses how both hosts
# make their VLANs.
set -eu
# shellcheck source=lab/initramfs/common.sh
. /lab/common.sh
B=${VLAN_BACKEND:-subif}

fail() {
    echo "vlan-hosts: FAIL $*"
    for h in a b; do
        if [ -r "/tmp/daemon-$h.log" ]; then
            echo "--- lanyard daemon log, host $h ---"
            cat "/tmp/daemon-$h.log"
        fi
    done
    exit 1
}
step() { echo "vlan-hosts: $* (uptime $(uptime_s))"; }
lya() { lanyard --socket /run/lanyard-a.sock "$@"; }
lyb() { lanyard --socket /run/lanyard-b.sock "$@"; }
reaches() { ip netns exec "$1" ping -c 2 -W 1 "$2" > /dev/null 2>&1; }

# The switch and the probe.
ip netns add sw
ip -n sw link add sw type bridge
ip -n sw link set sw up
plug() { # plug NS: NS's eth0 into the switch
    ip -n sw link add "to-$1" type veth peer name eth0 netns "$1"
    ip -n sw link set "to-$1" master sw
    ip -n sw link set "to-$1" up
    ip -n "$1" link set eth0 up
}
for h in hosta hostb probe; do ip netns add "$h"; plug "$h"; done
for v in 10 20; do
    ip -n probe link add link eth0 name "eth0.$v" type vlan id "$v"
    ip -n probe addr add "192.168.$v.99/24" dev "eth0.$v"
    ip -n probe link set "eth0.$v" up
done

for h in a b; do
    ip netns exec "host$h" env LANYARD_LOG=info lanyard daemon --socket "/run/lanyard-$h.sock" \
        --state-dir "/var/lib/lanyard-$h" > "/tmp/daemon-$h.log" 2>&1 &
done
lab_wait 300 lya net list > /dev/null 2>&1 || fail "host A's daemon did not answer"
lab_wait 300 lyb net list > /dev/null 2>&1 || fail "host B's daemon did not answer"
step "two daemons answer"

lya net create v10 --mode nat --vlan 10 --uplink eth0 --vlan-backend "$B" --subnet 192.168.10.0/24 > /dev/null || fail "A: net create v10"
lya net create v20 --mode bridge --vlan 20 --uplink eth0 --vlan-backend "$B" --subnet 192.168.20.0/24 > /dev/null || fail "A: net create v20"
lyb net create v10 --mode bridge --vlan 10 --uplink eth0 --vlan-backend "$B" --subnet 192.168.10.0/24 > /dev/null || fail "B: net create v10"
lyb net create v20 --mode bridge --vlan 20 --uplink eth0 --vlan-backend "$B" --subnet 192.168.20.0/24 > /dev/null || fail "B: net create v20"
step "networks on both hosts ($B)"

ip netns add a1; ip netns add b1; ip netns add b2
lya port create --net v10 --vm a1 --type veth --netns a1 --ifname eth0 > /dev/null || fail "A: port a1"
lyb port create --net v10 --vm b1 --type veth --netns b1 --ifname eth0 > /dev/null || fail "B: port b1"
lyb port create --net v20 --vm b2 --type veth --netns b2 --ifname eth0 > /dev/null || fail "B: port b2"
ip netns exec a1 udhcpc -f -q -n -t 5 -T 2 -A 1 -i eth0 -s /lab/udhcpc.script > /tmp/udhcpc-a1.log 2>&1 \
    || { cat /tmp/udhcpc-a1.log; fail "a1 got no lease from host A"; }
a1=$(ip -n a1 -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
ip netns exec b1 udhcpc -f -q -n -t 5 -T 2 -A 1 -i eth0 -s /lab/udhcpc.script > /tmp/udhcpc-b1.log 2>&1 \
    || { cat /tmp/udhcpc-b1.log; fail "b1 (host B) got no lease from host A over VLAN 10"; }
b1=$(ip -n b1 -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
grep -q "server 192.168.10.1" /tmp/udhcpc-b1.log || { cat /tmp/udhcpc-b1.log; fail "b1's lease is not host A's"; }
say "b1 on host B leased $b1 from host A"
lya lease list v10 -o json | grep -q "\"$b1\"" || fail "host A does not list b1's lease"
reaches b1 "$a1" || fail "b1 (host B) cannot reach a1 (host A) on VLAN 10"
reaches b1 192.168.10.1 || fail "b1 cannot reach host A's gateway"
say "vlan 10 spans both hosts"
reaches a1 192.168.10.99 || fail "a1 cannot reach the probe's VLAN 10 device: no tag 10 on the wire"
ip -n b2 addr add 192.168.20.50/24 dev eth0
reaches b2 192.168.20.99 || fail "b2 cannot reach the probe's VLAN 20 device: no tag 20 on the wire"
say "the wire carries tags 10 and 20"
ip -n b2 addr flush dev eth0
ip -n b2 addr add 192.168.10.50/24 dev eth0
if reaches b2 "$a1"; then fail "b2 (VLAN 20) reaches a1 (VLAN 10)"; fi
if reaches b2 "$b1"; then fail "b2 (VLAN 20) reaches b1 (VLAN 10)"; fi
if reaches b2 192.168.10.1; then fail "b2 (VLAN 20) reaches host A's VLAN 10 gateway"; fi
say "vlan 20 stays apart"

step "vlan across hosts ok"

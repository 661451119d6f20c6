#!/bin/sh
# Lab-host smoke test (run by lab/host-run inside the VM): the kernel
# features the host kernel lacks are there, and lanyard runs.
set -eu
fail() { echo "$*" > "${LAB_FAIL_REASON:-/dev/null}"; echo "smoke: FAIL $*"; exit 1; }
step() { echo "smoke: $* (uptime $(cut -d' ' -f1 /proc/uptime))"; }

step "kernel $(uname -r)"
ip link add sm-a type veth peer name sm-b || fail "veth"
ip link add link sm-a name sm-a.10 type vlan id 10 || fail "vlan device"
ip -d link show sm-a.10 | grep -q 'vlan protocol 802.1Q id 10' || fail "vlan id not 10"
ip link add sm-br type bridge vlan_filtering 1 || fail "bridge"
ip -d link show sm-br | grep -q 'vlan_filtering 1' || fail "vlan_filtering not on"
ip link set sm-b master sm-br || fail "enslave"
bridge vlan add dev sm-b vid 10 || fail "bridge vlan add"
bridge vlan show dev sm-b | grep -qw 10 || fail "vid 10 missing on port"
ip link set sm-a up; ip link set sm-b up; ip link set sm-br up; ip link set sm-a.10 up
step "veth + 802.1Q + vlan_filtering bridge ok"

# A tagged frame crosses the filtering bridge: VLAN 10 on a port, bridge
# itself on VLAN 10 as well, ping across.
bridge vlan add dev sm-br vid 10 self || fail "bridge self vid"
ip link add link sm-br name sm-br.10 type vlan id 10 || fail "vlan on bridge"
ip link set sm-br.10 up
ip link del sm-a.10
ip netns add sm-ns
ip link set sm-a netns sm-ns
ip netns exec sm-ns ip link add link sm-a name sm-a.10 type vlan id 10
ip netns exec sm-ns ip link set sm-a up
ip netns exec sm-ns ip link set sm-a.10 up
ip netns exec sm-ns ip addr add 10.10.0.2/24 dev sm-a.10
ip addr add 10.10.0.1/24 dev sm-br.10
ping -c 2 -W 2 10.10.0.2 >/dev/null || fail "ping over vlan 10 through filtering bridge"
step "tagged ping through vlan_filtering bridge ok"

nft -f - <<'NFT' || fail "nft nat/masquerade/ct/reject"
table inet lab_smoke {
    chain smoke_post { type nat hook postrouting priority srcnat; oifname "sm-br" masquerade; }
    chain smoke_forward { type filter hook forward priority filter; ct state established,related accept; iifname "sm-br.10" reject with icmpx type admin-prohibited; }
}
NFT
nft list table inet lab_smoke >/dev/null || fail "nft list"
nft delete table inet lab_smoke
step "nftables ok"

ip link add sm-vx type vxlan id 42 dstport 4789 local 10.10.0.1 nolearning || fail "vxlan"
step "vxlan ok"

lanyard --version || lanyard --help >/dev/null || fail "lanyard does not run"
step "lanyard runs"

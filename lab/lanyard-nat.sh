#!/bin/sh
# Lab-host end-to-end test of lanyard itself (run by lab/host-run inside the
# VM, on Debian's cloud kernel): `lanyard daemon` starts, `net create` makes
# a NAT network, `port create --type veth` puts a port into a namespace
# (vm1), busybox udhcpc in vm1 leases an address from lanyard's DHCP server,
# lanyard's DNS server resolves vm1.default, vm1 pings the gateway and,
# masqueraded, an outside namespace that has no route back, `port delete`
# removes the port and its lease, and the daemon exits cleanly on SIGTERM.
#
# Everything lanyard answers is printed on the console as one line for
# tests/lab.rs to check (`LAB: <what>-json {...}`); the script itself fails
# (LAB-RESULT: FAIL <reason>) as soon as a step does not work. All of it
# happens inside the throw-away VM, which has no network device.
set -eu
# shellcheck source=lab/initramfs/common.sh
. /lab/common.sh

SOCK=/run/lanyard/lanyard.sock
NET=default
SUBNET=192.168.122.0/24
GW=192.168.122.1

fail() {
    echo "$*" > "${LAB_FAIL_REASON:-/dev/null}"
    echo "e2e: FAIL $*"
    if [ -r /tmp/daemon.log ]; then
        echo "--- lanyard daemon log ---"
        cat /tmp/daemon.log
        echo "--- end of daemon log ---"
    fi
    exit 1
}
step() { echo "e2e: $* (uptime $(uptime_s))"; }
ly() { lanyard --socket "$SOCK" "$@"; }
# Prints `LAB: <tag>-json <one-line JSON>` from a file.
show_json() { say "$1-json $(tr -d '\n' < "$2")"; }
# The string value of "key" in pretty-printed lanyard JSON (one key a line).
json_str() { sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n1; }

LANYARD_LOG=info lanyard daemon --socket "$SOCK" --state-dir /var/lib/lanyard > /tmp/daemon.log 2>&1 &
dpid=$!
lab_wait 300 ly net list > /dev/null 2>&1 || fail "lanyard daemon did not answer on $SOCK within 30 s"
step "daemon answers"

ly net create "$NET" --mode nat --subnet "$SUBNET" -o json > /tmp/net.json || fail "net create"
show_json net /tmp/net.json
[ "$(json_str gateway /tmp/net.json)" = "$GW" ] || fail "net create: gateway is not $GW"
bridge=$(json_str bridge /tmp/net.json)
ip -br addr show dev "$bridge" | grep -q " $GW/24" || fail "bridge $bridge does not carry $GW/24"
step "net create ok (bridge $bridge)"

# The outside: a namespace behind a veth, with no route to the VM subnet.
ip netns add out
ip link add up0 type veth peer name eth0 netns out
ip addr add 203.0.113.1/24 dev up0
ip link set up0 up
ip -n out addr add 203.0.113.2/24 dev eth0
ip -n out link set eth0 up
ip -n out link set lo up

ip netns add vm1
ly port create --net "$NET" --vm vm1 --type veth --netns vm1 --ifname eth0 -o json > /tmp/port.json \
    || fail "port create"
show_json port /tmp/port.json
port_ip=$(json_str ip /tmp/port.json)
port_mac=$(json_str mac /tmp/port.json)
port_id=$(json_str id /tmp/port.json)
port_if=$(json_str ifname /tmp/port.json)
[ -n "$port_ip" ] && [ -n "$port_mac" ] && [ -n "$port_id" ] || fail "port create: no ip, mac or id"
say "vm1 eth0 mac $(ip netns exec vm1 cat /sys/class/net/eth0/address)"
step "port create ok ($port_id $port_if $port_mac $port_ip)"

# busybox udhcpc with the lab's hook, which configures eth0 and prints
# `LAB: lease <ip> router <r> prefix <n> server <id> ...`.
ip netns exec vm1 udhcpc -f -q -n -t 5 -T 2 -A 1 -i eth0 -s /lab/udhcpc.script > /tmp/udhcpc.log 2>&1 \
    || { cat /tmp/udhcpc.log; fail "udhcpc in vm1 got no lease"; }
cat /tmp/udhcpc.log
leased=$(ip -n vm1 -4 -o addr show dev eth0 | awk '{print $4}')
[ "$leased" = "$port_ip/24" ] || fail "vm1 leased $leased, but the port's ip is $port_ip"
ly lease list "$NET" -o json > /tmp/leases.json || fail "lease list"
show_json leases /tmp/leases.json
step "dhcp ok ($leased)"

# lanyard's DNS server on the gateway knows the VM by its name.
ip netns exec vm1 nslookup -type=a "vm1.$NET" "$GW" > /tmp/dns.log 2>&1 || { cat /tmp/dns.log; fail "nslookup vm1.$NET"; }
resolved=$(sed -n '/^Name:/,$ s/^Address:[[:space:]]*//p' /tmp/dns.log | head -n1)
say "dns vm1.$NET $resolved"
[ "$resolved" = "$port_ip" ] || { cat /tmp/dns.log; fail "vm1.$NET resolved to '$resolved', not $port_ip"; }
step "dns ok"

ip netns exec vm1 ping -c 2 -W 2 "$GW" > /dev/null || fail "vm1 cannot ping the gateway $GW"
say "ping gateway ok"
ip netns exec vm1 ping -c 2 -W 2 203.0.113.2 > /dev/null || fail "vm1 cannot reach the outside (masquerade)"
say "ping outside ok"
step "pings ok"

ly port delete "$port_id" > /dev/null || fail "port delete"
ly port list -o json > /tmp/ports.json || fail "port list"
show_json ports-after-delete /tmp/ports.json
ly lease list "$NET" -o json > /tmp/leases.json || fail "lease list"
show_json leases-after-delete /tmp/leases.json
if ip link show dev "$port_if" > /dev/null 2>&1; then fail "port link $port_if still exists after port delete"; fi
step "port delete ok"

kill -TERM "$dpid"
rc=0
wait "$dpid" || rc=$?
say "daemon exit $rc"
[ "$rc" = 0 ] || fail "lanyard daemon exited with $rc on SIGTERM"
step "lanyard end to end ok"

#!/usr/bin/env bash
# Comparison 3: the data plane. Two namespace "VMs" on a lanyard NAT network
# vs the same topology built by hand with `ip link` (bridge + veths, and one
# nft masquerade rule for NAT; no lanyard):
#
#   [vm1]--veth--[host: bridge 10.30.0.1/24, NAT]--veth--[vm2]
#                        |up0 203.0.113.1/24
#                      [out 203.0.113.2/24]   (no route back: NAT only)
#
# Measured with iperf3 (JSON): TCP vm1 -> vm2 (bridged), UDP 64-byte
# datagrams vm1 -> vm2 at full speed (received packets/s), TCP vm1 -> out
# (masqueraded). Each test runs REPEAT times, lanyard and hand-built
# alternating; the median counts.
set -euo pipefail
source "$BENCH_DIR/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BENCH_QUICK" = 1 ]; then SECS=3; REPEAT=2; else SECS=10; REPEAT=3; fi
SECS=${DP_SECS:-$SECS}; REPEAT=${DP_REPEAT:-$REPEAT}   # overrides for experiments
TESTS=${DP_TESTS:-tcp udp64 nat}
OUT="$BENCH_RUN/dataplane"
mkdir -p "$OUT"


# --- lanyard ---------------------------------------------------------------------
LH=$(mkns dlh); LV1=$(mkns dlv1); LV2=$(mkns dlv2); LO=$(mkns dlo)
LY_SOCK="$OUT/ly.sock"
export LY_SOCK
start_lanyard "$LH" "$LY_SOCK" "$OUT/state" "$OUT/daemon.log" >/dev/null
outside "$LH" "$LO" 203.0.113.1/24 203.0.113.2/24
ly net create dp --mode nat --subnet 10.30.0.0/24 >/dev/null
for v in 1 2; do
    ns=$LV1; [ $v = 2 ] && ns=$LV2
    ip=$(ly port create --net dp --vm "dvm$v" --type veth --netns "$ns" --ifname eth0 -o json | jq -r .ip)
    vm_static "$ns" "$ip/24" 10.30.0.1
    eval "L${v}_IP=$ip"
done

# --- by hand ---------------------------------------------------------------------
HH=$(mkns dhh); HV1=$(mkns dhv1); HV2=$(mkns dhv2); HO=$(mkns dho)
ip -n "$HH" link add name br0 type bridge stp_state 0
ip -n "$HH" addr add 10.30.0.1/24 dev br0
ip -n "$HH" link set dev br0 up
for v in 1 2; do
    ns=$HV1; [ $v = 2 ] && ns=$HV2
    ip -n "$HH" link add name hv$v type veth peer name eth0 netns "$ns"
    ip -n "$HH" link set dev hv$v master br0
    ip -n "$HH" link set dev hv$v up
done
vm_static "$HV1" "$L1_IP/24" 10.30.0.1
vm_static "$HV2" "$L2_IP/24" 10.30.0.1
note "bridge-nf-call-iptables: lanyard host $(ip netns exec "$LH" sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo absent), hand-built host $(ip netns exec "$HH" sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo absent)"
outside "$HH" "$HO" 203.0.113.1/24 203.0.113.2/24
ip netns exec "$HH" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$HH" nft -f - <<'EOF'
table ip handnat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.30.0.0/24 oifname "up0" masquerade
    }
}
EOF

wait_ping "$LV1" "$L2_IP" || die "lanyard: vm1 cannot reach vm2"
wait_ping "$LV1" 203.0.113.2 || die "lanyard: vm1 cannot reach the outside"
wait_ping "$HV1" "$L2_IP" || die "by hand: vm1 cannot reach vm2"
wait_ping "$HV1" 203.0.113.2 || die "by hand: vm1 cannot reach the outside"

for ns in "$LV2" "$LO" "$HV2" "$HO"; do
    ip netns exec "$ns" iperf3 -s >"$OUT/iperf3-server-$ns.log" 2>&1 &
    track $!
done
sleep 1

# measure SETUP TEST -> prints the figure (Gbit/s or packets/s)
measure() {
    local setup=$1 test=$2 cli dst j
    if [ "$setup" = lanyard ]; then cli=$LV1; else cli=$HV1; fi
    case $test in
        tcp) dst=$L2_IP ;;
        udp64) dst=$L2_IP ;;
        nat) dst=203.0.113.2 ;;
    esac
    j="$OUT/$setup-$test-$RANDOM.json"
    case $test in
        tcp | nat)
            ip netns exec "$cli" timeout $((SECS + 30)) iperf3 -c "$dst" -t "$SECS" -J >"$j" 2>&1 || true
            jq -r '.end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000' "$j" 2>/dev/null || echo ""
            ;;
        udp64)
            ip netns exec "$cli" timeout $((SECS + 30)) iperf3 -c "$dst" -u -l 64 -b 0 -t "$SECS" -J >"$j" 2>&1 || true
            jq -r '.end.sum as $s | (($s.packets - $s.lost_packets) / $s.seconds) | round' "$j" 2>/dev/null || echo ""
            ;;
    esac
}


say "data plane: iperf3 ${SECS} s x $REPEAT, lanyard vs hand-built"
declare -A RES
for test in $TESTS; do
    l="" h=""
    for ((r = 0; r < REPEAT; r++)); do
        if [ $((r % 2)) = 0 ]; then
            l+=" $(measure lanyard $test)"; h+=" $(measure hand $test)"
        else
            h+=" $(measure hand $test)"; l+=" $(measure lanyard $test)"
        fi
    done
    RES[$test.l]=$(echo "$l" | median); RES[$test.h]=$(echo "$h" | median)
    note "$test: lanyard [$l ] by hand [$h ]"
done

rowdp() { # TEST LABEL UNIT
    local r
    r=$(ratio "${RES[$1.l]}" "${RES[$1.h]}")
    row "data plane" "$2 ($3), lanyard vs hand-built" "${RES[$1.l]}" "${RES[$1.h]}" "${r:+${r}x}" ">= 0.98x" "$(verdict "$(ge "$r" 0.98)")"
}
for test in $TESTS; do
    case $test in
        tcp) rowdp tcp "TCP vm1 -> vm2, same network" "Gbit/s" ;;
        udp64) rowdp udp64 "UDP 64-byte vm1 -> vm2, received" "packets/s" ;;
        nat) rowdp nat "TCP vm1 -> outside through NAT" "Gbit/s" ;;
    esac
done
bench_note "data plane: iperf3 ${SECS} s per run, median of $REPEAT runs alternating lanyard and hand-built; the hand-built host has a bridge, veths, ip_forward=1 and one nft masquerade rule (lanyard adds its inet lanyard table)."

#!/usr/bin/env bash
# Comparison 4: floating IPs at scale. lanyard (one DNAT map, one SNAT map:
# element changes only) against the iptables-per-floating-IP way Neutron's
# L3 agent does it (three rules per floating IP: DNAT in PREROUTING and
# OUTPUT, SNAT in float-snat), built here by hand in the same kind of
# namespaces:
#
#   [out 100.64.0.2/16] --veth-- up0 [host 100.64.0.1/16, NAT] --veth-- [vm]
#
# Measured, with 10 and with 10,000 floating IPs (quick: 2,000):
#   - new connections per second through DNAT to one floating IP: hping3
#     --flood with random source addresses from the outside namespace, so
#     every packet is the first of its connection, counted as received by
#     the VM (eth0 rx_packets) over a fixed time; conntrack is flushed in the
#     host namespace before each run. Established connections skip the NAT
#     chains, so only new ones show what a per-packet lookup costs; the
#     iptables side's floating IP has its rules last (the 10,000th), as a
#     new one would;
#   - the time to associate the last floating IP (lanyard: POST
#     /v1/fips/IP/associate on a keep-alive connection, bench/tools/
#     fipload.py, the last one disassociated and associated again 20 times;
#     iptables: the three `iptables -t nat -A` a new floating IP costs).
set -euo pipefail
source "$BENCH_DIR/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BENCH_QUICK" = 1 ]; then MANY=2000; REPEAT=3; else MANY=10000; REPEAT=5; fi
SECS=1
MANY=${FIP_MANY:-$MANY}
FEW=10
NETS=$(((MANY + 999) / 1000))
OUT="$BENCH_RUN/floating"
mkdir -p "$OUT"
for t in iptables hping3 conntrack; do command -v "$t" >/dev/null || die "needs $t"; done


# rate HOSTNS OUTNS VMNS DST -> new connections/s the VM received
rate() {
    local before after
    ip netns exec "$1" conntrack -F >/dev/null 2>&1 || true
    before=$(ip netns exec "$3" cat /sys/class/net/eth0/statistics/rx_packets)
    ip netns exec "$2" timeout -s INT "$SECS" hping3 --flood --udp -p 9 -d 36 --rand-source "$4" >/dev/null 2>&1 || true
    sleep 0.3
    after=$(ip netns exec "$3" cat /sys/class/net/eth0/statistics/rx_packets)
    echo $(((after - before) / SECS))
}


# --- lanyard ---------------------------------------------------------------------
LH=$(mkns flh); LV=$(mkns flv); LO=$(mkns flo)
LY_SOCK="$OUT/ly.sock"
export LY_SOCK
DPID=$(start_lanyard "$LH" "$LY_SOCK" "$OUT/state" "$OUT/daemon.log")
outside "$LH" "$LO" 100.64.0.1/16 100.64.0.2/16
for ((i = 0; i < NETS; i++)); do
    ly net create "$(printf 'n%03d' "$i")" --mode nat --subnet "10.60.$((4 * i)).0/22" >/dev/null
done
VM_IP=$(ly port create --net n000 --vm fvm --type veth --netns "$LV" --ifname eth0 -o json | jq -r .ip)
vm_static "$LV" "$VM_IP/22" 10.60.0.1
ly fip pool create pub --range 100.64.1.0-100.64.63.255 --interface up0 >/dev/null
say "floating IPs: lanyard, $FEW then $MANY floating IPs ($NETS networks of tap ports)"
python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" batch $((FEW - 1)) --nets 1 --chunk $((FEW - 1)) >"$OUT/few-ports.json"
python3 "$BENCH_DIR/tools/fipload.py" "$LY_SOCK" >"$OUT/few.json"
FIP=$(ly fip list -o json | jq -r --arg ip "$VM_IP" '.[] | select(.fixed_ip == $ip) | .ip')
[ -n "$FIP" ] || die "lanyard: the VM has no floating IP"
wait_ping "$LO" "$FIP" || die "lanyard: the outside cannot reach the VM's floating IP $FIP"
l_few=""
for ((r = 0; r < REPEAT; r++)); do l_few+=" $(rate "$LH" "$LO" "$LV" "$FIP")"; done
# The rest: ports in batches, then one floating IP each.
python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" batch $((MANY - FEW)) --nets "$NETS" --chunk 500 --first "$FEW" \
    --deadline 600 >"$OUT/many-ports.json" || warn "port creation reported failures"
python3 "$BENCH_DIR/tools/fipload.py" "$LY_SOCK" --deadline 900 --again 20 >"$OUT/many.json"
L_COUNT=$(ly fip list -o json | jq '[.[] | select(.port != null)] | length')
note "lanyard: $(jq -c . "$OUT/many.json")"
note "lanyard: $L_COUNT floating IPs associated; $(ip -n "$LH" -4 -o addr show dev up0 | wc -l) addresses on up0"
wait_ping "$LO" "$FIP" || die "lanyard: the floating IP stopped answering with $L_COUNT of them"
l_many=""
for ((r = 0; r < REPEAT; r++)); do l_many+=" $(rate "$LH" "$LO" "$LV" "$FIP")"; done
L_LAST=$(jq -r .again_p50_ms "$OUT/many.json")
L_LAST99=$(jq -r .again_p99_ms "$OUT/many.json")
L_P50=$(jq -r .last100_p50_ms "$OUT/many.json")
L_FIRST=$(jq -r .first100_p50_ms "$OUT/many.json")
stop_pid "$DPID" 10

# --- iptables, a floating IP at a time (Neutron's L3 agent) ------------------------
BH=$(mkns fbh); BV=$(mkns fbv); BO=$(mkns fbo)
ip -n "$BH" link add name br0 type bridge stp_state 0
ip -n "$BH" addr add 10.60.0.1/22 dev br0
ip -n "$BH" link set dev br0 up
ip -n "$BH" link add name bv0 type veth peer name eth0 netns "$BV"
ip -n "$BH" link set dev bv0 master br0
ip -n "$BH" link set dev bv0 up
vm_static "$BV" "$VM_IP/22" 10.60.0.1
outside "$BH" "$BO" 100.64.0.1/16 100.64.0.2/16
ip netns exec "$BH" sysctl -qw net.ipv4.ip_forward=1
ip -n "$BH" addr add "$FIP/32" dev up0
# rules COUNT: the nat table with COUNT floating IPs, the measured one last.
rules() {
    local n=$1 i a b
    {
        echo "*nat"
        echo ":PREROUTING ACCEPT [0:0]"; echo ":OUTPUT ACCEPT [0:0]"; echo ":POSTROUTING ACCEPT [0:0]"
        echo ":neutron-l3-agent-PREROUTING - [0:0]"; echo ":neutron-l3-agent-OUTPUT - [0:0]"
        echo ":neutron-l3-agent-float-snat - [0:0]"
        echo "-A PREROUTING -j neutron-l3-agent-PREROUTING"
        echo "-A OUTPUT -j neutron-l3-agent-OUTPUT"
        echo "-A POSTROUTING -j neutron-l3-agent-float-snat"
        for ((i = 1; i < n; i++)); do
            a="100.65.$((i / 256)).$((i % 256))"; b="10.70.$((i / 256)).$((i % 256))"
            echo "-A neutron-l3-agent-PREROUTING -d $a/32 -j DNAT --to-destination $b"
            echo "-A neutron-l3-agent-OUTPUT -d $a/32 -j DNAT --to-destination $b"
            echo "-A neutron-l3-agent-float-snat -s $b/32 -j SNAT --to-source $a"
        done
        echo "-A neutron-l3-agent-PREROUTING -d $FIP/32 -j DNAT --to-destination $VM_IP"
        echo "-A neutron-l3-agent-OUTPUT -d $FIP/32 -j DNAT --to-destination $VM_IP"
        echo "-A neutron-l3-agent-float-snat -s $VM_IP/32 -j SNAT --to-source $FIP"
        echo "COMMIT"
    } | ip netns exec "$BH" iptables-restore
}
say "floating IPs: iptables ($(iptables --version | head -1)), $FEW then $MANY floating IPs"
rules "$FEW"
wait_ping "$BO" "$FIP" || die "iptables: the outside cannot reach the floating IP"
b_few=""
for ((r = 0; r < REPEAT; r++)); do b_few+=" $(rate "$BH" "$BO" "$BV" "$FIP")"; done
rules $((MANY - 1))
# The MANY-th floating IP: its three rules, as the agent adds them.
t0=$(now_s)
ip netns exec "$BH" iptables -t nat -A neutron-l3-agent-PREROUTING -d "$FIP/32" -j DNAT --to-destination "$VM_IP"
ip netns exec "$BH" iptables -t nat -A neutron-l3-agent-OUTPUT -d "$FIP/32" -j DNAT --to-destination "$VM_IP"
ip netns exec "$BH" iptables -t nat -A neutron-l3-agent-float-snat -s "$VM_IP/32" -j SNAT --to-source "$FIP"
B_LAST=$(calc "($(now_s) - $t0) * 1000" | awk '{printf "%.1f", $1}')
note "iptables: $(ip netns exec "$BH" iptables -t nat -S | wc -l) rules in the nat table"
b_many=""
for ((r = 0; r < REPEAT; r++)); do b_many+=" $(rate "$BH" "$BO" "$BV" "$FIP")"; done

# --- rows ---------------------------------------------------------------------------
LF=$(echo "$l_few" | median %d); LM=$(echo "$l_many" | median %d)
BF=$(echo "$b_few" | median %d); BM=$(echo "$b_many" | median %d)
note "new connections/s: lanyard $FEW [$l_few ] $MANY [$l_many ]; iptables $FEW [$b_few ] $MANY [$b_many ]"
LR=$(ratio "$LM" "$LF"); BR=$(ratio "$BM" "$BF")
row "floating IPs" "new connections/s through DNAT, $MANY floating IPs / $FEW: lanyard vs iptables" \
    "$LM / $LF" "$BM / $BF" "${LR:+${LR}x} vs ${BR:+${BR}x}" ">= 0.95x" "$(verdict "$(ge "$LR" 0.95)")"
row "floating IPs" "new connections/s through DNAT with $MANY floating IPs: lanyard vs iptables" \
    "$LM" "$BM" "$(r=$(ratio "$LM" "$BM"); echo "${r:+${r}x}")" "-" "-"
row "floating IPs" "time to associate the ${MANY}th floating IP (ms, lanyard: median / p99 of 20): lanyard vs iptables" \
    "$L_LAST / $L_LAST99" "$B_LAST" "" "< 5 ms" "$(verdict "$(lt "$L_LAST" 5)")"
row "floating IPs" "lanyard association (ms), median of the first / last 100" "$L_FIRST / $L_P50" "" "" "" "-"
bench_note "floating IPs: every measured packet opens a new connection (hping3 --flood --rand-source), so it crosses the NAT chains; the VM counts what it receives in ${SECS} s; median of $REPEAT runs, conntrack flushed before each. The iptables baseline has Neutron's three rules per floating IP, the measured one's last; its association time is the three \`iptables -t nat -A\` of a new floating IP ($(iptables --version | head -1))."

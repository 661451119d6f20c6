#!/usr/bin/env bash
# Comparison 2: the control plane.
#   - time to create 100 NAT networks and 10,000 tap ports through the REST
#     API (bench/tools/restload.py: 4 keep-alive connections in parallel),
#     one POST /v1/ports per port, and again (fresh daemon) with
#     POST /v1/ports/batch, one request of 100 ports per network;
#   - peak RSS of the daemon with that state (VmHWM);
#   - time to restart the daemon with that state until it answers (it
#     answers only after reconcile), and the packets a running flow (ping
#     -i 0.01 between two veth "VMs" on one lanyard network) loses meanwhile.
# Peer: libvirt's virsh net-define/net-start, only if it can be confined to a
# network namespace (see LIBVIRT_WHY below: it is not run).
# Topology: [vm1] --veth port-- [host: lanyard daemon, 100 bridges, taps] --veth port-- [vm2]
set -euo pipefail
source "$BENCH_DIR/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

NETS=100
TARGET_PORTS=10000
if [ "$BENCH_QUICK" = 1 ]; then
    PORTS=2000; DEADLINE=150
else
    PORTS=$TARGET_PORTS; DEADLINE=900
fi
OUT="$BENCH_RUN/control"
mkdir -p "$OUT"
HOST=$(mkns host); VM1=$(mkns cvm1); VM2=$(mkns cvm2)
LY_SOCK="$OUT/ly.sock"
export LY_SOCK

say "control plane: $NETS networks, $PORTS tap ports (REST, 4 connections), restart under ping"
DPID=$(start_lanyard "$HOST" "$LY_SOCK" "$OUT/state" "$OUT/daemon.log")

python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" networks "$NETS" --concurrency 4 --deadline 300 >"$OUT/nets.json" ||
    { cat "$OUT/nets.json" >&2; die "network creation failed"; }
NET_S=$(jq -r .seconds "$OUT/nets.json")
note "$NETS networks in ${NET_S} s"

# The two VMs of the restart test: veth ports on n000 with their fixed IPs.
for v in 1 2; do
    ns=$VM1; [ $v = 2 ] && ns=$VM2
    ly port create --net n000 --vm "pingvm$v" --type veth --netns "$ns" --ifname eth0 -o json >"$OUT/vm$v.json"
    ip=$(jq -r .ip "$OUT/vm$v.json")
    vm_static "$ns" "$ip/24" "$(ly net show n000 -o json | jq -r .gateway)"
    eval "VM${v}_IP=$ip"
done
wait_ping "$VM1" "$VM2_IP" || die "vm1 cannot reach vm2 ($VM2_IP) on n000"

python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" ports "$PORTS" --nets "$NETS" --concurrency 4 --deadline "$DEADLINE" >"$OUT/ports.json" ||
    { head -c 2000 "$OUT/ports.json" >&2; warn "port creation reported failures"; }
PORTS_DONE=$(jq -r .done "$OUT/ports.json")
PORT_S=$(jq -r .seconds "$OUT/ports.json")
note "$PORTS_DONE ports in ${PORT_S} s (asked $PORTS); elapsed at each 10%: $(jq -c .marks "$OUT/ports.json")"
# Cost of the last 10% of ports, per port: shows whether it grows with the state.
LAST_MS=$(jq -r '.marks | to_entries | map([(.key|tonumber), .value]) | sort_by(.[0]) | if length >= 2 then ((.[-1][1] - .[-2][1]) * 1000 / (.[-1][0] - .[-2][0])) else empty end' "$OUT/ports.json")
FIRST_MS=$(jq -r '.marks | to_entries | map([(.key|tonumber), .value]) | sort_by(.[0]) | if length >= 1 then (.[0][1] * 1000 / .[0][0]) else empty end' "$OUT/ports.json")
HWM_KB=$(awk '/VmHWM/{print $2}' "/proc/$DPID/status")
TAPS=$(ip -n "$HOST" -o link show type tun | wc -l)
note "taps in the host namespace: $TAPS; daemon VmHWM ${HWM_KB} kB"

# Total for 100 networks + 10,000 ports: measured, or projected from the
# cost per port of the last tenth when the run was quick or hit the deadline.
TOTAL=$(calc "$NET_S + $PORT_S")
if [ "$PORTS_DONE" -ge "$TARGET_PORTS" ]; then
    PROJ=$TOTAL; HOW="measured"
else
    # Cost per port grows about linearly with the ports already there, so
    # project with a linear fit of per-port cost between first and last tenth.
    PROJ=$(awk -v n="$NET_S" -v done="$PORTS_DONE" -v s="$PORT_S" -v a="$FIRST_MS" -v b="${LAST_MS:-$FIRST_MS}" -v t="$TARGET_PORTS" 'BEGIN{
        slope = (done > 0) ? (b - a) / (0.9 * done) : 0; if (slope < 0) slope = 0;
        rest = 0; for (k = done; k < t; k += 100) rest += 100 * (b + slope * (k - done)) / 1000;
        printf "%.1f", n + s + rest }')
    HOW="projected from $PORTS_DONE ports"
fi

# --- restart under a running flow ---------------------------------------------
say "restart with $NETS networks and $PORTS_DONE ports, ping -i 0.01 vm1 -> vm2"
ip netns exec "$VM1" ping -n -i 0.01 -W 1 "$VM2_IP" >"$OUT/ping.txt" 2>&1 &
PING=$!
track "$PING"
sleep 2
T0=$(now_s)
stop_pid "$DPID" 30
T1=$(now_s)
ip netns exec "$HOST" "$LANYARD" daemon --socket "$LY_SOCK" --state-dir "$OUT/state" >>"$OUT/daemon2.log" 2>&1 &
DPID=$!
track "$DPID"
ANSWERED=0
for ((i = 0; i < 6000; i++)); do # 120 s at most
    if ly net list >/dev/null 2>&1; then ANSWERED=1; break; fi
    alive "$DPID" || break
    sleep 0.02
done
T2=$(now_s)
sleep 2
kill -INT "$PING" 2>/dev/null; wait "$PING" 2>/dev/null || true
STOP_S=$(elapsed "$T0" "$T1")
RESTART_S=$(elapsed "$T1" "$T2")
[ "$ANSWERED" = 1 ] || { tail -20 "$OUT/daemon2.log" >&2; RESTART_S=""; warn "daemon did not answer after restart"; }
TX=$(awk '/packets transmitted/{print $1}' "$OUT/ping.txt" || true)
RX=$(awk '/packets transmitted/{print $4}' "$OUT/ping.txt" || true)
LOST=$(( ${TX:-0} - ${RX:-0} ))
HWM2_KB=$(awk '/VmHWM/{print $2}' "/proc/$DPID/status" 2>/dev/null || echo "")
OPS=$(grep -o 'ops=[0-9]*' "$OUT/daemon2.log" 2>/dev/null | tail -1 | cut -d= -f2 || true)
TAPS2=$(ip -n "$HOST" -o link show type tun | wc -l)
note "stop ${STOP_S} s, start until answering ${RESTART_S:-never} s; reconcile ops=${OPS:-?}; taps before/after $TAPS/$TAPS2; ping sent $TX received $RX; VmHWM after restart ${HWM2_KB} kB"

# --- one port at a time, latency ---------------------------------------------------
# With the state there, ports one request at a time on one connection: the
# latency of a single port create, its durable store write included.
SINGLE=1000; [ "$BENCH_QUICK" = 1 ] && SINGLE=300
python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" ports "$SINGLE" --nets "$NETS" --concurrency 1 --first "$PORTS" --deadline 120 >"$OUT/single.json" ||
    warn "single port creates reported failures: $(jq -c .errors "$OUT/single.json" | head -c 300)"
P50=$(jq -r .p50_ms "$OUT/single.json"); P99=$(jq -r .p99_ms "$OUT/single.json")
note "single port create, one at a time with $PORTS_DONE ports there: p50 ${P50} ms, p99 ${P99} ms, max $(jq -r .max_ms "$OUT/single.json") ms over $(jq -r .done "$OUT/single.json") ports"

# --- the same state through the batch API -----------------------------------------
# A fresh daemon in a fresh namespace: 100 networks, then the ports with
# POST /v1/ports/batch, one request per network (all or nothing each).
BATCH_S="" BATCH_DONE=0
stop_pid "$DPID" 30
delns "$HOST"
HOST=$(mkns hostb)
LY_SOCK="$OUT/lyb.sock"
DPID=$(start_lanyard "$HOST" "$LY_SOCK" "$OUT/stateb" "$OUT/daemonb.log")
python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" networks "$NETS" --concurrency 4 --deadline 300 >"$OUT/netsb.json" || true
NETB_S=$(jq -r .seconds "$OUT/netsb.json")
if python3 "$BENCH_DIR/tools/restload.py" "$LY_SOCK" batch "$PORTS" --nets "$NETS" --concurrency 2 --deadline "$DEADLINE" >"$OUT/batch.json"; then
    BATCH_DONE=$(jq -r .done "$OUT/batch.json")
    BATCH_S=$(jq -r .seconds "$OUT/batch.json")
    note "batch API: $NETS networks in ${NETB_S} s, $BATCH_DONE ports in ${BATCH_S} s ($(jq -r .per_request "$OUT/batch.json") per request)"
else
    note "batch API failed or absent: $(jq -c .errors "$OUT/batch.json" 2>/dev/null | head -c 300)"
fi
HWMB_KB=$(awk '/VmHWM/{print $2}' "/proc/$DPID/status")

# --- rows ------------------------------------------------------------------------
PER_PORT=$(awk -v s="$PORT_S" -v n="$PORTS_DONE" 'BEGIN{ if (n > 0) printf "%.1f", s * 1000 / n }')
row "control" "$NETS networks: create (s)" "$NET_S" "" "" "" ""
row "control" "$PORTS_DONE tap ports: create (s); ms/port first / last tenth" "$PORT_S; $(fmt %.1f "$FIRST_MS") / $(fmt %.1f "${LAST_MS:-0}")" "" "" "" ""
row "control" "100 networks + 10,000 ports, one POST per port (s), $HOW" "$PROJ" "" "" "< 10 s" "$(verdict "$(lt "$PROJ" 10)")"
if [ -n "$BATCH_S" ] && [ "$BATCH_DONE" -gt 0 ]; then
    TOTB=$(calc "$NETB_S + $BATCH_S")
    if [ "$BATCH_DONE" -ge "$TARGET_PORTS" ]; then HOWB=measured; else
        TOTB=$(awk -v n="$NETB_S" -v s="$BATCH_S" -v d="$BATCH_DONE" -v t="$TARGET_PORTS" 'BEGIN{printf "%.1f", n + s * t / d}'); HOWB="projected linearly from $BATCH_DONE ports"; fi
    row "control" "100 networks + 10,000 ports via POST /v1/ports/batch (s), $HOWB" "$TOTB" "" "" "< 5 s" "$(verdict "$(lt "$TOTB" 5)")"
    row "control" "daemon peak RSS (VmHWM, MB), $BATCH_DONE ports created in batches" "$(fmt %.1f "$(calc "$HWMB_KB/1024")")" "" "" "< 100 MB" "$(verdict "$(lt "$(calc "$HWMB_KB/1024")" 100)")"
else
    row "control" "100 networks + 10,000 ports via POST /v1/ports/batch" "" "" "" "< 5 s" "n/a"
fi
row "control" "daemon restart until it answers, reconciled (s), $PORTS_DONE ports" "$RESTART_S" "" "" "< 0.5 s" "$(verdict "$(lt "$RESTART_S" 0.5)")"
row "control" "single port create, p50 / p99 (ms), durable, $PORTS_DONE ports there" "$P50 / $P99" "" "" "< 2 / < 10" "$(verdict "$( [ "$(lt "$P50" 2)" = 1 ] && [ "$(lt "$P99" 10)" = 1 ] && echo 1 || echo 0)")"
row "control" "packets lost by ping -i 0.01 across the restart" "$LOST of $TX" "" "" "0" "$(verdict "$( [ -n "$TX" ] && [ "$TX" -gt 0 ] && { [ "$LOST" = 0 ] && echo 1 || echo 0; } || echo x)")"
row "control" "daemon peak RSS (VmHWM, MB), $PORTS_DONE ports / after restart" "$(fmt %.1f "$(calc "$HWM_KB/1024")") / $(fmt %.1f "$(calc "${HWM2_KB:-0}/1024")")" "" "" "< 100 MB" "$(verdict "$(lt "$(calc "$HWM_KB/1024")" 100)")"
LIBVIRT_WHY="libvirtd's network driver is not confined by a network namespace: it reaches firewalld over the system D-Bus (a filesystem socket shared with the root namespace) when one runs, keeps host-global state in /etc/libvirt, /var/lib/libvirt and /run/libvirt, and Debian's libvirt-daemon-system defines an autostarting 'default' NAT network (virbr0, 192.168.122.0/24) that any libvirtd later started in the root namespace would bring up"
row "control" "libvirt virsh net-define/net-start of the same networks" "" "not measured" "" "" "n/a"
bench_note "control: libvirt not measured: $LIBVIRT_WHY."
bench_note "control: ports via POST /v1/ports with 4 keep-alive connections; ${PER_PORT} ms per port on average; $NETS networks created first (POST /v1/networks). Restart = new daemon process start until GET answers (the daemon answers only after reconcile); stop took ${STOP_S} s."

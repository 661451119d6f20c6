#!/usr/bin/env bash
# Comparison 5: many hosts (issue 13). Two lanyard daemons with --etcd, as
# in tests/cluster.rs: etcd in a "store" namespace that also routes the
# underlay between the hosts, a host namespace per daemon, and a veth "VM"
# per host on one network spanning both over VXLAN:
#
#   [vm a]--veth--[host a: lybr, lyvx]--u0 10.215.1.2   10.215.2.2 u0--[host b: lybr, lyvx]--veth--[vm b]
#                                            \                /
#                                 h1 10.215.1.1 [store: etcd, ip_forward] h2 10.215.2.1
#
# Measured:
#   1. a port created through A's socket (POST /v1/ports, a veth into a new
#      namespace, its address set by hand as the port says) until the first
#      ping reply from VM b (`ping -D -i 0.002`, started right after the
#      address is set); and until B's VXLAN device holds the port's MAC (B
#      following etcd: `bridge monitor fdb` in B, each line stamped as it
#      arrives). SAMPLES samples, each port deleted again; p50/p99.
#      The same on a network where A has no other port (B has no flood
#      entry towards A until it follows, so the first packets wait for it).
#      The REST call alone (curl's time_total, a TAP port) against etcd, and
#      the same call on a single-host daemon (SQLite) in this run.
#   2. iperf3 TCP VM a -> VM b over lanyard's VXLAN, against a VXLAN built
#      by hand (`ip link add ... type vxlan id N local ... dstport 4789
#      nolearning`, a bridge, static FDB entries) in fresh namespaces of the
#      same shape, same interface names, addresses, MACs and MTUs; and
#      against the same hand-built VXLAN carrying a copy of lanyard's
#      nftables rulesets (which tells the firewall's cost from the
#      tunnel's); median of REPEAT runs each, in rotating order.
#   3. 1,000 TAP ports created on B in ONE `POST /v1/ports/batch` (so etcd
#      runs with --max-txn-ops 4096: a port is three operations with its two
#      claims, and the default 128 takes 42 ports per batch): on A, the FDB
#      entries of its VXLAN device, its daemon's VmRSS/VmHWM before and
#      after and CPU time spent following, and the time until all 1,000
#      entries are there; then FOLLOW single ports created on B with the
#      1,000 present, each until A's FDB holds it.
set -euo pipefail
source "$BENCH_DIR/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BENCH_QUICK" = 1 ]; then SAMPLES=15; SECS=3; REPEAT=3; FOLLOW=5; else SAMPLES=50; SECS=10; REPEAT=5; FOLLOW=10; fi
SAMPLES=${CL_SAMPLES:-$SAMPLES}; SECS=${CL_SECS:-$SECS}; REPEAT=${CL_REPEAT:-$REPEAT}   # overrides for experiments
FOLLOW=${CL_FOLLOW:-$FOLLOW}; REMOTE=${CL_REMOTE:-1000}
MAX_TXN_OPS=4096
OUT="$BENCH_RUN/cluster"
mkdir -p "$OUT"
for t in etcd curl iperf3 bridge jq stdbuf; do command -v "$t" >/dev/null || die "needs $t"; done
HZ=$(getconf CLK_TCK)

# joined STORE HOST N: the host's u0 10.215.N.2/24, the store's hN .1, and a
# route to the other hosts through the store.
joined() {
    ip -n "$2" link add name u0 type veth peer name "h$3" netns "$1"
    ip -n "$2" addr add "10.215.$3.2/24" dev u0
    ip -n "$2" link set dev u0 up
    ip -n "$1" addr add "10.215.$3.1/24" dev "h$3"
    ip -n "$1" link set dev "h$3" up
    ip -n "$2" route add 10.215.0.0/16 via "10.215.$3.1"
}

# rest SOCK METHOD PATH [BODY] -> prints "HTTP_CODE SECONDS"; the answer in $OUT/resp.json
rest() {
    local args=(-sS -m 300 --unix-socket "$1" -X "$2" -o "$OUT/resp.json" -w '%{http_code} %{time_total}\n')
    [ $# -ge 4 ] && args+=(-H 'Content-Type: application/json' --data-binary "$4")
    curl "${args[@]}" "http://lanyard$3" || echo "000 0"
}

# field NAME: sets $NAME to the string field NAME of $OUT/resp.json, in bash.
field() {
    local body
    body=$(<"$OUT/resp.json")
    [[ $body =~ \"$1\":\"([^\"]*)\" ]] || die "no $1 in the answer: ${body:0:300}"
    printf -v "$1" '%s' "${BASH_REMATCH[1]}"
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; }
mb() { fmt %.1f "$(calc "${1:-0}/1024")"; }

# pcts "NUMBERS" -> "p50 p99" (nearest rank), 1 decimal
pcts() {
    tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g |
        awk '{a[NR]=$1} END{ if (NR == 0) { print "- -"; exit }
             i50 = int(0.50 * NR + 0.999); i99 = int(0.99 * NR + 0.999); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
             printf "%.1f %.1f\n", a[i50], a[i99] }'
}

# fdb_monitor NS LOG: `bridge monitor fdb` in NS, each line stamped with the
# wall clock as it arrives (the monitor dies with the namespace).
fdb_monitor() {
    (ip netns exec "$1" stdbuf -oL bridge monitor fdb | while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done >"$2") &
    track $!
}
# seen_at LOG MAC DST -> the stamp of the first line adding MAC towards DST
seen_at() {
    grep -i -- "$2" "$1" 2>/dev/null | grep -v ' Deleted ' | grep -m1 "dst $3 " | awk '{print $1}' || true
}
# remote_entries NS DEV DST -> FDB entries of DEV towards DST, the flood entry left out
remote_entries() {
    ip netns exec "$1" bridge fdb show dev "$2" | grep "dst $3 " | grep -vc '^00:00:00:00:00:00' || true
}

# --- the cluster ---------------------------------------------------------------
S=$(mkns cls); A=$(mkns cla); B=$(mkns clb); VA=$(mkns clva); VB=$(mkns clvb)
joined "$S" "$A" 1
joined "$S" "$B" 2
ip netns exec "$S" sysctl -qw net.ipv4.ip_forward=1
wait_ping "$A" 10.215.2.2 || die "the hosts' underlay addresses do not reach each other"
ETCD_URLS=http://10.215.1.1:2379,http://10.215.2.1:2379
ip netns exec "$S" etcd --name bench --data-dir "$OUT/etcd-data" \
    --listen-client-urls "$ETCD_URLS" --advertise-client-urls "$ETCD_URLS" \
    --listen-peer-urls http://10.215.1.1:2380 --initial-advertise-peer-urls http://10.215.1.1:2380 \
    --initial-cluster bench=http://10.215.1.1:2380 --max-txn-ops "$MAX_TXN_OPS" \
    --logger zap --log-level warn >"$OUT/etcd.log" 2>&1 &
ETCD_PID=$!
track "$ETCD_PID"
for ((i = 0; i < 300; i++)); do
    ip netns exec "$S" curl -s -m 1 http://10.215.1.1:2379/health 2>/dev/null | grep -q true && break
    alive "$ETCD_PID" || { tail -20 "$OUT/etcd.log" >&2; die "etcd exited at start-up"; }
    sleep 0.1
done
[ "$i" -lt 300 ] || die "etcd did not become healthy"
SOCK_A="$OUT/a.sock" SOCK_B="$OUT/b.sock"
PID_A=$(start_lanyard "$A" "$SOCK_A" "$OUT/state-a" "$OUT/a.log" --etcd http://10.215.1.1:2379 --node bench-a --underlay u0)
PID_B=$(start_lanyard "$B" "$SOCK_B" "$OUT/state-b" "$OUT/b.log" --etcd http://10.215.2.1:2379 --node bench-b --underlay u0)
lya() { "$LANYARD" --socket "$SOCK_A" "$@"; }
lyb() { "$LANYARD" --socket "$SOCK_B" "$@"; }

lya net create cl --mode isolated --subnet 10.50.0.0/21 --mtu 1450 -o json >"$OUT/net.json"
BRIDGE=$(jq -r .bridge "$OUT/net.json")
vxlan_of() { ip -n "$1" -j -d link show type vxlan 2>/dev/null | jq -r --arg br "${2:-$BRIDGE}" '[.[] | select(.master == $br)][0].ifname // empty'; }
VX=""
for ((i = 0; i < 100; i++)); do
    VX=$(vxlan_of "$A"); VXB=$(vxlan_of "$B")
    [ -n "$VX" ] && [ "$VX" = "$VXB" ] && break
    sleep 0.1
done
[ -n "$VX" ] && [ "$VX" = "$VXB" ] || die "no VXLAN device of the network on both hosts (A: '$VX', B: '$VXB')"
lya port create --net cl --vm vma --type veth --netns "$VA" --ifname eth0 -o json >"$OUT/pa.json"
lyb port create --net cl --vm vmb --type veth --netns "$VB" --ifname eth0 -o json >"$OUT/pb.json"
IP_A=$(jq -r .ip "$OUT/pa.json"); MAC_A=$(jq -r .mac "$OUT/pa.json")
IP_B=$(jq -r .ip "$OUT/pb.json"); MAC_B=$(jq -r .mac "$OUT/pb.json")
vm_static "$VA" "$IP_A/21"
vm_static "$VB" "$IP_B/21"
VM_MTU=$(ip -n "$VA" -j link show dev eth0 | jq -r '.[0].mtu')
for ((i = 0; i < 100; i++)); do
    ip netns exec "$A" bridge fdb show dev "$VX" | grep -qi "$MAC_B dst 10.215.2.2" &&
        ip netns exec "$B" bridge fdb show dev "$VX" | grep -qi "$MAC_A dst 10.215.1.2" && break
    sleep 0.1
done
wait_ping "$VA" "$IP_B" || die "lanyard: VM a cannot reach VM b across the hosts"
note "cluster: network cl ($BRIDGE, $VX), VM a $IP_A, VM b $IP_B, VM MTU $VM_MTU"

# --- 1. port create on A -> reachable from B ---------------------------------------
say "cluster: $SAMPLES ports created through A, each until VM b's first ping reply"
# VM b asks ARP again after 100 ms instead of 1 s, should a first request go
# unanswered; its neighbour cache is flushed before every sample.
ip netns exec "$VB" sysctl -qw net.ipv4.neigh.eth0.retrans_time_ms=100
fdb_monitor "$B" "$OUT/fdb-b.log"
sleep 0.3
# reach_samples NET VMNS TAG: SAMPLES ports created through A on NET, each
# pinged from VMNS on B; sets REACH, CALL, TO_B (ms, one per sample) and
# MISSED; per-sample rows in $OUT/reach-TAG.tsv.
reach_samples() {
    local net=$1 vm=$2 tag=$3 i k ns t0 t2 t code took ip mac id reply seq
    local -a t0s macs
    REACH="" CALL="" TO_B="" MISSED=0
    for ((i = 0; i < SAMPLES; i++)); do
        ns=$(mkns "cp$tag$i")
        ip -n "$vm" neigh flush dev eth0 2>/dev/null || true
        t0=$EPOCHREALTIME
        read -r code took < <(rest "$SOCK_A" POST /v1/ports "{\"net\":\"$net\",\"vm\":\"p$tag$i\",\"type\":\"veth\",\"netns\":\"$ns\",\"ifname\":\"eth0\"}")
        [ "$code" = 201 ] || [ "$code" = 200 ] || die "port create through A answered $code: $(head -c 300 "$OUT/resp.json")"
        # (no jq here: on a loaded machine each process costs tens of ms)
        field ip; field mac; field id
        printf 'addr add %s/21 dev eth0\nlink set dev eth0 up\n' "$ip" | ip -n "$ns" -batch -
        t2=$EPOCHREALTIME
        read -r reply seq < <(ip netns exec "$vm" ping -n -D -c 1 -w 5 -i 0.002 "$ip" 2>/dev/null |
            awk '/bytes from/{ s = $1; gsub(/[][]/, "", s); q = $0; sub(/.*icmp_seq=/, "", q); sub(/ .*/, "", q); print s, q; exit }') || true
        if [ -n "$reply" ]; then REACH+=" $(calc "($reply - $t0) * 1000")"; else MISSED=$((MISSED + 1)); fi
        CALL+=" $(calc "$took * 1000")"
        t0s[i]=$t0 macs[i]=$mac
        # per sample: ms to the REST answer, to the address set, to the reply; the reply's icmp_seq
        printf '%s\t%s\t%s\t%s\n' "$(calc "$took * 1000")" "$(calc "($t2 - $t0) * 1000")" \
            "$([ -n "$reply" ] && calc "($reply - $t0) * 1000")" "${seq:-}" >>"$OUT/reach-$tag.tsv"
        # Wait for B to follow (bounded) before the port goes, so every
        # sample's entry is seen; then delete port and namespace.
        for ((k = 0; k < 100; k++)); do [ -n "$(seen_at "$OUT/fdb-b.log" "$mac" 10.215.1.2)" ] && break; sleep 0.05; done
        "$LANYARD" --socket "$SOCK_A" port delete "$id" >/dev/null
        ip netns delete "$ns"
    done
    for ((i = 0; i < SAMPLES; i++)); do
        t=$(seen_at "$OUT/fdb-b.log" "${macs[i]}" 10.215.1.2)
        [ -n "$t" ] && TO_B+=" $(calc "($t - ${t0s[i]}) * 1000")"
    done
    note "[$net] reach (ms):$REACH"
    note "[$net] per sample (REST ms, address set ms, reply ms, icmp_seq): $(awk -F'\t' '{printf " %.0f/%.0f/%.0f/%s", $1, $2, $3, $4}' "$OUT/reach-$tag.tsv")"
    note "[$net] B's FDB entry (ms):$TO_B"
    note "[$net] REST call (ms):$CALL"
}
reach_samples cl "$VB" a
read -r REACH50 REACH99 <<<"$(pcts "$REACH")"
read -r TOB50 TOB99 <<<"$(pcts "$TO_B")"
read -r CALL50 CALL99 <<<"$(pcts "$CALL")"
MISSED1=$MISSED

# The same where A has no other port on the network: B has no flood entry
# towards A then, so the first packets wait for B to follow etcd.
say "cluster: $SAMPLES ports created through A on a network where A has no other port"
lya net create cl3 --mode isolated --subnet 10.54.0.0/21 --mtu 1450 >/dev/null
VB3=$(mkns clvb3)
lyb port create --net cl3 --vm vmb3 --type veth --netns "$VB3" --ifname eth0 -o json >"$OUT/pb3.json"
vm_static "$VB3" "$(jq -r .ip "$OUT/pb3.json")/21"
ip netns exec "$VB3" sysctl -qw net.ipv4.neigh.eth0.retrans_time_ms=100
sleep 0.5
reach_samples cl3 "$VB3" f
read -r FREACH50 FREACH99 <<<"$(pcts "$REACH")"
read -r FTOB50 FTOB99 <<<"$(pcts "$TO_B")"
MISSED3=$MISSED
lyb port delete "$(jq -r .id "$OUT/pb3.json")" >/dev/null
lya net delete cl3 --force >/dev/null
delns "$VB3"

# The REST call alone: TAP ports through A (etcd) and through a single-host
# daemon (SQLite, state in $BENCH_RUN) of this run.
say "cluster: $SAMPLES TAP port creates through A (etcd) and through a single host (SQLite)"
Q=$(mkns clq)
SOCK_Q="$OUT/q.sock"
PID_Q=$(start_lanyard "$Q" "$SOCK_Q" "$OUT/state-q" "$OUT/q.log")
"$LANYARD" --socket "$SOCK_Q" net create cl --mode isolated --subnet 10.50.0.0/21 --mtu 1450 >/dev/null
TAP_E="" TAP_S="" TAP_IDS=""
for ((i = 0; i < SAMPLES; i++)); do
    for which in e s; do
        sock=$SOCK_A; [ $which = s ] && sock=$SOCK_Q
        read -r code took < <(rest "$sock" POST /v1/ports "{\"net\":\"cl\",\"vm\":\"t$i\",\"type\":\"tap\"}")
        [ "$code" = 201 ] || [ "$code" = 200 ] || die "TAP port create ($which) answered $code: $(head -c 300 "$OUT/resp.json")"
        if [ $which = e ]; then TAP_E+=" $(calc "$took * 1000")"; field id; TAP_IDS+=" $id"; else TAP_S+=" $(calc "$took * 1000")"; fi
    done
done
# They go again: A's bridge keeps room for what follows.
for id in $TAP_IDS; do
    read -r code took < <(rest "$SOCK_A" DELETE "/v1/ports/$id")
    [ "${code:0:1}" = 2 ] || die "deleting TAP port $id through A answered $code"
done
read -r TAPE50 TAPE99 <<<"$(pcts "$TAP_E")"
read -r TAPS50 TAPS99 <<<"$(pcts "$TAP_S")"
note "TAP create on etcd (ms):$TAP_E"
note "TAP create on SQLite (ms):$TAP_S"
stop_pid "$PID_Q"
delns "$Q"

# --- 2. throughput: lanyard's VXLAN vs one built by hand -------------------------
HS=$(mkns chs); HA=$(mkns cha); HB=$(mkns chb); HVA=$(mkns chva); HVB=$(mkns chvb)
joined "$HS" "$HA" 1
joined "$HS" "$HB" 2
ip netns exec "$HS" sysctl -qw net.ipv4.ip_forward=1
VNI=$(ip -n "$A" -j -d link show dev "$VX" | jq -r '.[0].linkinfo.info_data.id')
# The hand-built hosts use lanyard's interface names (bridge, VXLAN
# device, the ports' host ends), so a copy of lanyard's nftables rulesets
# matches there exactly as on lanyard's hosts (the third contender below).
PORT_A=$(jq -r .ifname "$OUT/pa.json"); PORT_B=$(jq -r .ifname "$OUT/pb.json")
# hand_host HOST VM LOCAL REMOTE VM_IP VM_MAC REMOTE_MAC PORT
hand_host() {
    ip -n "$1" link add name "$BRIDGE" type bridge stp_state 0
    ip -n "$1" link add name "$VX" type vxlan id "$VNI" local "$3" dev u0 dstport 4789 nolearning
    ip -n "$1" link set dev "$VX" mtu 1450 master "$BRIDGE" up
    ip -n "$1" link add name "$8" type veth peer name eth0 netns "$2"
    ip -n "$1" link set dev "$8" mtu "$VM_MTU" master "$BRIDGE" up
    ip -n "$1" link set dev "$BRIDGE" mtu 1450 up
    ip -n "$2" link set dev eth0 address "$6" mtu "$VM_MTU"
    vm_static "$2" "$5/21"
    ip netns exec "$1" bridge fdb append 00:00:00:00:00:00 dev "$VX" dst "$4" self permanent
    ip netns exec "$1" bridge fdb append "$7" dev "$VX" dst "$4" self permanent
}
hand_host "$HA" "$HVA" 10.215.1.2 10.215.2.2 "$IP_A" "$MAC_A" "$MAC_B" "$PORT_A"
hand_host "$HB" "$HVB" 10.215.2.2 10.215.1.2 "$IP_B" "$MAC_B" "$MAC_A" "$PORT_B"
wait_ping "$HVA" "$IP_B" || die "by hand: VM a cannot reach VM b"
ip netns exec "$A" nft list ruleset >"$OUT/ruleset-a.nft"
ip netns exec "$B" nft list ruleset >"$OUT/ruleset-b.nft"
# rules on|off: lanyard's rulesets copied into the hand-built hosts, or none
rules() {
    if [ "$1" = on ]; then
        ip netns exec "$HA" nft -f "$OUT/ruleset-a.nft" && ip netns exec "$HB" nft -f "$OUT/ruleset-b.nft"
    else
        ip netns exec "$HA" nft flush ruleset && ip netns exec "$HB" nft flush ruleset
    fi
}
rules on || die "cannot load lanyard's rulesets into the hand-built hosts"
wait_ping "$HVA" "$IP_B" || die "by hand, with lanyard's rules: VM a cannot reach VM b"
rules off
note "lanyard's $VX: $(ip -n "$A" -d link show dev "$VX" | sed -n 3p | sed 's/^ *//' | cut -c1-160)"
note "hand-built $VX: $(ip -n "$HA" -d link show dev "$VX" | sed -n 3p | sed 's/^ *//' | cut -c1-160)"
note "bridge-nf-call-iptables: lanyard host $(ip netns exec "$A" sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo absent), hand-built host $(ip netns exec "$HA" sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo absent)"
IPERF=()
for ns in "$VB" "$HVB"; do
    ip netns exec "$ns" iperf3 -s >"$OUT/iperf3-server-$ns.log" 2>&1 &
    track $!
    IPERF+=($!)
done
sleep 1
tcp() { # CLIENT_NS -> Gbit/s
    local j="$OUT/tcp-$1-$RANDOM.json"
    ip netns exec "$1" timeout $((SECS + 30)) iperf3 -c "$IP_B" -t "$SECS" -J >"$j" 2>&1 || true
    jq -r '.end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000' "$j" 2>/dev/null || echo ""
}
# one WHO: one run of lanyard (l), hand-built (h), hand-built with lanyard's rules (r)
one() {
    case $1 in
        l) l+=" $(tcp "$VA")" ;;
        h) h+=" $(tcp "$HVA")" ;;
        r) rules on || die "cannot load lanyard's rulesets"; hr+=" $(tcp "$HVA")"; rules off ;;
    esac
}
say "cluster: iperf3 TCP VM a -> VM b across hosts, ${SECS} s x $REPEAT, lanyard vs hand-built VXLAN (without, with lanyard's rules)"
l="" h="" hr=""
for ((r = 0; r < REPEAT; r++)); do
    case $((r % 3)) in
        0) one l; one h; one r ;;
        1) one h; one r; one l ;;
        2) one r; one l; one h ;;
    esac
done
TCP_L=$(echo "$l" | median); TCP_H=$(echo "$h" | median); TCP_HR=$(echo "$hr" | median)
note "tcp across hosts (Gbit/s): lanyard [$l ] by hand [$h ] by hand with lanyard's rules [$hr ]"
for pid in "${IPERF[@]}"; do stop_pid "$pid"; done
for ns in "$HS" "$HA" "$HB" "$HVA" "$HVB"; do delns "$ns"; done

# --- 3. 1,000 remote ports -------------------------------------------------------
say "cluster: $REMOTE TAP ports created on B in one batch; A's FDB, memory, convergence"
fdb_monitor "$A" "$OUT/fdb-a.log"
sleep 0.3
BASE=$(remote_entries "$A" "$VX" 10.215.2.2)
RSS_A0=$(status_kb "$PID_A" VmRSS); HWM_A0=$(status_kb "$PID_A" VmHWM); CPU_A0=$(cpu_ticks "$PID_A")
RSS_B0=$(status_kb "$PID_B" VmRSS)
jq -cn --argjson n "$REMOTE" '[range($n) | {net: "cl", vm: ("r\(. + 10000)"), type: "tap"}]' >"$OUT/batch.json"
t0=$EPOCHREALTIME
read -r code BATCH_TOOK < <(rest "$SOCK_B" POST /v1/ports/batch "@$OUT/batch.json")
[ "$code" = 201 ] || [ "$code" = 200 ] || die "the batch through B answered $code: $(head -c 300 "$OUT/resp.json")"
CONV="" n=0
for ((i = 0; i < 1200; i++)); do
    n=$(remote_entries "$A" "$VX" 10.215.2.2)
    [ "$n" -ge $((BASE + REMOTE)) ] && { CONV=$(calc "$EPOCHREALTIME - $t0"); break; }
    sleep 0.1
done
# The last stamp of an entry towards B in A's monitor: when the last one came.
# The first and last stamps of entries towards B in A's monitor: when A
# began and finished writing them.
grep -v ' Deleted ' "$OUT/fdb-a.log" | grep 'dst 10.215.2.2 ' | awk -v t0="$t0" '$1 >= t0 {print $1}' >"$OUT/fdb-a.stamps" || true
FIRST_S="" LAST_S=""
[ -s "$OUT/fdb-a.stamps" ] && FIRST_S=$(calc "$(head -1 "$OUT/fdb-a.stamps") - $t0") && LAST_S=$(calc "$(tail -1 "$OUT/fdb-a.stamps") - $t0")
sleep 2   # what A holds once it settled
RSS_A1=$(status_kb "$PID_A" VmRSS); HWM_A1=$(status_kb "$PID_A" VmHWM); CPU_A1=$(cpu_ticks "$PID_A")
RSS_B1=$(status_kb "$PID_B" VmRSS); HWM_B1=$(status_kb "$PID_B" VmHWM)
ENTRIES=$(remote_entries "$A" "$VX" 10.215.2.2)
ALL_A=$(ip netns exec "$A" bridge fdb show dev "$VX" | wc -l)
CPU_S=$(calc "(${CPU_A1:-0} - ${CPU_A0:-0}) / $HZ")
note "batch of $REMOTE through B: POST ${BATCH_TOOK} s; A had $ENTRIES entries towards B (before: $BASE) after ${CONV:-never (120 s)} s, A's monitor saw the first at ${FIRST_S:-?} s and the last at ${LAST_S:-?} s; A's fdb show dev $VX: $ALL_A lines"
note "A's daemon: VmRSS $RSS_A0 -> $RSS_A1 kB, VmHWM $HWM_A0 -> $HWM_A1 kB, CPU $CPU_S s; B's daemon VmRSS $RSS_B0 -> $RSS_B1 kB (VmHWM $HWM_B1 kB)"

say "cluster: $FOLLOW single ports created on B with $REMOTE there, each until A's FDB has it"
FOLLOWED=""
for ((k = 0; k < FOLLOW; k++)); do
    t0=$EPOCHREALTIME
    read -r code took < <(rest "$SOCK_B" POST /v1/ports "{\"net\":\"cl\",\"vm\":\"f$k\",\"type\":\"tap\"}")
    [ "$code" = 201 ] || [ "$code" = 200 ] || die "port create through B answered $code"
    field mac
    t=""
    for ((i = 0; i < 200; i++)); do t=$(seen_at "$OUT/fdb-a.log" "$mac" 10.215.2.2); [ -n "$t" ] && break; sleep 0.05; done
    [ -n "$t" ] && FOLLOWED+=" $(calc "($t - $t0) * 1000")"
done
FOL50=$(fmt %.1f "$(echo "$FOLLOWED" | median)")
note "with $REMOTE ports: B's new port in A's FDB (ms):$FOLLOWED"

# The same again the way etcd's default --max-txn-ops allows: 1,000 more
# ports in batches of 42, one after the other, on a second network (a
# bridge takes at most 1,023 ports), created through A, where A has none.
say "cluster: $REMOTE more TAP ports on B on a second network in batches of 42; A's convergence"
lya net create cl2 --mode isolated --subnet 10.52.0.0/21 --mtu 1450 -o json >"$OUT/net2.json"
BRIDGE2=$(jq -r .bridge "$OUT/net2.json")
VX2=""
for ((i = 0; i < 100; i++)); do VX2=$(vxlan_of "$A" "$BRIDGE2"); [ -n "$VX2" ] && [ -n "$(vxlan_of "$B" "$BRIDGE2")" ] && break; sleep 0.1; done
[ -n "$VX2" ] || die "no VXLAN device of the second network on A"
jq -cn --argjson n "$REMOTE" '[range($n) | {net: "cl2", vm: ("s\(. + 10000)"), type: "tap"}] | _nwise(42)' >"$OUT/batches42.jsonl"
BATCHES=$(wc -l <"$OUT/batches42.jsonl")
[ "$BATCHES" -gt 0 ] || die "no batches written to $OUT/batches42.jsonl"
RSS_A1B=$(status_kb "$PID_A" VmRSS); CPU_A1B=$(cpu_ticks "$PID_A")
BASE2=$(remote_entries "$A" "$VX2" 10.215.2.2)
t0=$EPOCHREALTIME
while IFS= read -r chunk; do
    read -r code took < <(rest "$SOCK_B" POST /v1/ports/batch "$chunk")
    [ "$code" = 201 ] || [ "$code" = 200 ] || die "a batch of 42 through B answered $code: $(head -c 300 "$OUT/resp.json")"
done <"$OUT/batches42.jsonl"
WROTE42=$(calc "$EPOCHREALTIME - $t0")
CONV42=""
for ((i = 0; i < 1200; i++)); do
    n=$(remote_entries "$A" "$VX2" 10.215.2.2)
    [ "$n" -ge $((BASE2 + REMOTE)) ] && { CONV42=$(calc "$EPOCHREALTIME - $t0"); break; }
    sleep 0.1
done
sleep 2
RSS_A2=$(status_kb "$PID_A" VmRSS); HWM_A2=$(status_kb "$PID_A" VmHWM); CPU_A2=$(cpu_ticks "$PID_A")
ENTRIES2=$(remote_entries "$A" "$VX2" 10.215.2.2)
TOTAL2=$(($(remote_entries "$A" "$VX" 10.215.2.2) + ENTRIES2))
CPU2_S=$(calc "(${CPU_A2:-0} - ${CPU_A1B:-0}) / $HZ")
note "$BATCHES batches of <= 42 through B on cl2: written in $WROTE42 s; A had $ENTRIES2 entries towards B on $VX2 after ${CONV42:-never (120 s)} s ($TOTAL2 on both devices); A's daemon VmRSS $RSS_A1B -> $RSS_A2 kB, VmHWM $HWM_A2 kB, CPU $CPU2_S s"

# --- rows --------------------------------------------------------------------------
R=$(ratio "$TCP_L" "$TCP_H")
row "cluster" "port created through A -> first ping reply from VM b on B, p50 / p99 (ms), $SAMPLES samples" "$REACH50 / $REACH99" "" "" "" "$([ "$MISSED1" = 0 ] && echo measured || echo "$MISSED1 unreached")"
row "cluster" "port created through A -> its MAC in B's VXLAN FDB, p50 / p99 (ms)" "$TOB50 / $TOB99" "" "" "" "measured"
row "cluster" "A's only port on a network: created through A -> first ping reply from B / in B's FDB, p50 / p99 (ms)" "$FREACH50 / $FREACH99; $FTOB50 / $FTOB99" "" "" "" "$([ "$MISSED3" = 0 ] && echo measured || echo "$MISSED3 unreached")"
row "cluster" "port create REST call, veth into a new namespace, etcd, p50 / p99 (ms)" "$CALL50 / $CALL99" "" "" "" "measured"
row "cluster" "port create REST call, TAP: etcd (lanyard) vs single host SQLite (peer), p50 / p99 (ms)" "$TAPE50 / $TAPE99" "$TAPS50 / $TAPS99" "$(r=$(ratio "$TAPE50" "$TAPS50"); echo "${r:+${r}x}")" "" "measured"
row "cluster" "TCP VM a -> VM b across hosts (Gbit/s), lanyard VXLAN vs hand-built VXLAN" "$TCP_L" "$TCP_H" "${R:+${R}x}" ">= 0.95x" "$(verdict "$(ge "$R" 0.95)")"
R2=$(ratio "$TCP_L" "$TCP_HR")
row "cluster" "TCP VM a -> VM b across hosts (Gbit/s), lanyard vs the hand-built VXLAN carrying a copy of lanyard's nftables rules" "$TCP_L" "$TCP_HR" "${R2:+${R2}x}" "" "measured"
row "cluster" "$REMOTE ports on B: FDB entries towards B on A's $VX" "$ENTRIES" "" "" "$((BASE + REMOTE))" "$(verdict "$(ge "$ENTRIES" $((BASE + REMOTE)))")"
row "cluster" "$REMOTE ports on B: A converged (all entries) after (s, from the POST; POST took $(fmt %.2f "$BATCH_TOOK") s)" "$(fmt %.2f "${CONV:-0}")" "" "" "" "$([ -n "$CONV" ] && echo measured || echo MISSED)"
row "cluster" "$REMOTE ports on B: A's daemon VmRSS before -> after (MB), VmHWM after" "$(mb "$RSS_A0") -> $(mb "$RSS_A1"), $(mb "$HWM_A1")" "" "" "" "measured"
row "cluster" "$REMOTE ports on B: A's daemon CPU spent following (s)" "$CPU_S" "" "" "" "measured"
row "cluster" "with $REMOTE ports on B: a new port on B -> its MAC in A's FDB, median of $FOLLOW (ms)" "$FOL50" "" "" "" "measured"
row "cluster" "$REMOTE more ports on B, second network, $BATCHES batches of <= 42 (written in $(fmt %.2f "$WROTE42") s): A converged after (s); entries on A (this device / both); A's VmRSS (MB); CPU (s)" "$(fmt %.2f "${CONV42:-0}") s; $ENTRIES2 / $TOTAL2; $(mb "$RSS_A2"); $CPU2_S" "" "" "$((BASE2 + REMOTE))" "$(verdict "$(ge "$ENTRIES2" $((BASE2 + REMOTE)))")"
bench_note "cluster: etcd $(etcd --version 2>/dev/null | awk '/etcd Version/{print $3}') with --max-txn-ops $MAX_TXN_OPS (one batch of $REMOTE ports), data dir on $(df --output=fstype "$OUT" | tail -1); two hosts routed through the store namespace; network --mtu 1450; ping -i 0.002 from VM b right after the new VM's address is set; iperf3 ${SECS} s x $REPEAT, the three contenders in rotating order; the hand-built VXLAN copies VNI, MTUs, interface names, VM addresses and MACs, and runs without nftables rules (conntrack off) or with a copy of lanyard's rulesets."

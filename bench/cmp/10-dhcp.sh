#!/usr/bin/env bash
# Comparison 1: DHCPv4 throughput and latency: lanyard's built-in server vs
# dnsmasq vs Kea, with a DHCP load generator as the client: dhcpload
# (bench/tools/dhcpload.rs, a cargo example built by bench/run) or perfdhcp
# (Kea's load generator). BENCH_DHCP_GEN=dhcpload|perfdhcp chooses; the
# default is dhcpload when $DHCPLOAD is there. perfdhcp uses 50-86% of a core
# at 6-13k offered exchanges/s on 2 CPUs, too little to find lanyard's knee;
# dhcpload does the same exchanges (same options, broadcast flag, one new
# client per exchange up to -R) for much less CPU.
#
# Every server gets the same subnet (10.20.0.0/16, server 10.20.0.1), the
# same pool (10.20.0.2-10.20.255.253), one-hour leases, and durable leases:
#   lanyard  group commit appended to the lease journal (in the OS) before
#            the ACK; the journal fdatasync'd within 500 ms, folded into
#            SQLite (fsync'd) once the server is quiet
#   dnsmasq  --dhcp-leasefile (rewritten and fsync'd after changes)
#   Kea      memfile, persist: true (CSV appended before the ACK, never fsync'd)
# Topology per step, all in namespaces of this run:
#   [cli: c0 10.20.255.254/16] --veth-- [srv: bridge 10.20.0.1/16 + server]
# lanyard makes its own bridge (`net create`); the client veth is put into
# it by hand. dnsmasq and Kea get a plain bridge made with `ip link`.
#
# Each step starts a fresh server (empty lease store), runs
#   dhcpload -l c0 -r RATE -p PERIOD -R CLIENTS            or
#   perfdhcp -4 -l c0 -B -r RATE -p PERIOD -R CLIENTS -x t
# and tears everything down. Both print (dhcpload directly, perfdhcp through
# tools/perfdhcp-parse.awk) the same line of counts and delay percentiles.
#
# Generator check (first, full and --quick runs): both generators against a
# fresh lanyard and a fresh Kea at -r 2000 for 5 s (best of 2), a rate both reach;
# completed exchanges/s and p50/p99 per generator show that they agree. The knee is the highest rate whose exchanges
# complete (drops <= DROP_OK of the DISCOVERs sent, achieved >= 90% of the
# asked rate); rates double until a step fails, then bisect. Then each
# server gets 2x and 4x its own knee (overload: completed exchanges should
# stay at the peak, not collapse).
#
# CPU placement (BENCH_DHCP_PIN=0 turns it off): the load generator runs on
# CPU 0 and the server under test on the others, the same for every server.
# Left to the scheduler, the generator and the server's busiest thread now
# and then share a CPU for a whole step; such a step's p99 was 2-3x that of
# a step where they did not (same build, run 14 in docs/performance.md), so
# unpinned delays measured the scheduler's placement as much as the server.
#
# CPU: the server's utime+stime (/proc/PID/stat) from the generator's start
# until the server has finished the run's work (lanyard folds its lease
# journal once the load stops), per 1,000 completed exchanges; the load generator's own CPU (as % of one
# core over the run) is reported too, so a saturated load generator shows.
set -euo pipefail
source "$BENCH_DIR/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BENCH_QUICK" = 1 ]; then
    PERIOD=3; CLIENTS=10000; BISECT=1; MAX_STEPS=9; KNEE_RUNS=1
else
    PERIOD=5; CLIENTS=50000; BISECT=3; MAX_STEPS=15; KNEE_RUNS=3
fi
DROP_OK=0.01
START_RATE=200
MAX_RATE=409600
# BENCH_SERVER_PIN (lib.sh) places every server: start_lanyard uses it, and
# so do start_dnsmasq and start_kea below.
CPUS=$(nproc)
if [ "${BENCH_DHCP_PIN:-1}" = 1 ] && [ "$CPUS" -ge 2 ]; then
    SERVER_CPUS=1
    [ "$CPUS" -gt 2 ] && SERVER_CPUS="1-$((CPUS - 1))"
    GEN_PIN=(taskset -c 0) BENCH_SERVER_PIN=(taskset -c "$SERVER_CPUS")
    PLACEMENT="the generator runs on CPU 0 and each server on CPU $SERVER_CPUS (taskset; BENCH_DHCP_PIN=0 leaves it to the scheduler)"
else
    GEN_PIN=()
    PLACEMENT="the generator and all servers share the machine's $CPUS CPUs, placed by the scheduler"
fi
GEN=${BENCH_DHCP_GEN:-}
if [ -z "$GEN" ]; then
    if [ -x "${DHCPLOAD:-}" ]; then GEN=dhcpload; else GEN=perfdhcp; fi
fi
case $GEN in
    dhcpload) [ -x "${DHCPLOAD:-}" ] || die "BENCH_DHCP_GEN=dhcpload but no DHCPLOAD binary (${DHCPLOAD:-unset})" ;;
    perfdhcp) ;;
    *) die "BENCH_DHCP_GEN must be dhcpload or perfdhcp, not $GEN" ;;
esac
OUT="$BENCH_RUN/dhcp"
mkdir -p "$OUT"
STEP=0

# --- one server per step ---------------------------------------------------

SRV= CLI= SRV_PID= LEASES=

topology() { # BRIDGE_IN_SRV: client namespace + veth into the bridge
    local br=$1
    ip -n "$SRV" link add name bcl0 type veth peer name c0 netns "$CLI"
    ip -n "$SRV" link set dev bcl0 master "$br"
    ip -n "$SRV" link set dev bcl0 up
    ip -n "$CLI" addr add 10.20.255.254/16 dev c0
    ip -n "$CLI" link set dev c0 up
}

plain_bridge() {
    ip -n "$SRV" link add name br0 type bridge stp_state 0
    ip -n "$SRV" addr add 10.20.0.1/16 dev br0
    ip -n "$SRV" link set dev br0 up
}

start_lanyard_dhcp() {
    local d=$1
    LY_SOCK="$d/ly.sock"
    SRV_PID=$(start_lanyard "$SRV" "$LY_SOCK" "$d/state" "$d/daemon.log")
    ly net create bench --mode nat --subnet 10.20.0.0/16 --dhcp-range 10.20.0.2-10.20.255.253 >/dev/null
    local br
    br=$(ly net show bench -o json | jq -r .bridge)
    topology "$br"
    SETTLE() { wait_lease_fold "$d/state"; }
    LEASES() { sqlite3 "$d/state/lanyard.db" 'select count(*) from leases' 2>/dev/null || echo "?"; }
    # What the server itself sent (its counters: under overload the
    # generator may lose replies the server sent), what it shed, and what
    # its socket dropped (a full receive queue, or the socket filter while
    # it sheds: /proc/net/udp's last column, for port 67 = 0x0043).
    SERVED() {
        {
            curl -s --unix-socket "$LY_SOCK" http://lanyard/metrics 2>/dev/null
            ip netns exec "$SRV" awk '$2 ~ /:0043$/ { print "socket_drops", $NF }' /proc/net/udp
        } | awk '/^lanyard_dhcp_sent_total/ && /type="(offer|ack)"/ { t = $1; sub(/.*type="/, "", t); sub(/".*/, "", t); n[t] += $2 }
                 /^lanyard_dhcp_dropped_total/ && /reason="overload"/ { shed += $2 }
                 /^socket_drops/ { sock += $2 }
                 END { if (n["offer"] + n["ack"] > 0) printf "  server sent %d OFFERs, %d ACKs, shed %d, socket dropped %d", n["offer"], n["ack"], shed, sock }'
    }
}

start_dnsmasq() {
    local d=$1
    plain_bridge
    topology br0
    "${BENCH_SERVER_PIN[@]}" ip netns exec "$SRV" dnsmasq --keep-in-foreground --port=0 --no-resolv --no-hosts \
        --bind-interfaces --interface=br0 --except-interface=lo \
        --dhcp-range=10.20.0.2,10.20.255.253,255.255.0.0,1h --dhcp-lease-max=70000 \
        --dhcp-leasefile="$d/dnsmasq.leases" --no-ping --dhcp-authoritative --quiet-dhcp \
        --pid-file="$d/dnsmasq.pid" --log-facility="$d/dnsmasq.log" >"$d/dnsmasq.out" 2>&1 &
    SRV_PID=$!
    track "$SRV_PID"
    SETTLE() { :; }
    LEASES() { wc -l <"$d/dnsmasq.leases" 2>/dev/null || echo "?"; }
    SERVED() { :; }
}

start_kea() {
    local d=$1
    plain_bridge
    topology br0
    cat >"$d/kea.json" <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["br0"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$d/leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
  "subnet4": [{"id": 1, "subnet": "10.20.0.0/16",
               "pools": [{"pool": "10.20.0.2 - 10.20.255.253"}],
               "option-data": [{"name": "routers", "data": "10.20.0.1"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "$d/kea.log"}], "severity": "WARN"}]
}}
EOF
    KEA_LOCKFILE_DIR="$d" KEA_PIDFILE_DIR="$d" "${BENCH_SERVER_PIN[@]}" ip netns exec "$SRV" kea-dhcp4 -c "$d/kea.json" >"$d/kea.out" 2>&1 &
    SRV_PID=$!
    track "$SRV_PID"
    SETTLE() { :; }
    LEASES() { echo $(($(wc -l <"$d/leases4.csv" 2>/dev/null || echo 1) - 1)); }
    SERVED() { :; }
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)

# step SERVER RATE [GENERATOR [PERIOD]]
#   -> prints "rate achieved drop p50 p99 p99do p99ra leases cpu_ms_per_1000 generator_cpu_pct p99_read"
#      (p99_read: the p99 as the generator read the replies; dhcpload only)
step() {
    local server=$1 rate=$2 gen=${3:-$GEN} period=${4:-$PERIOD} d i
    STEP=$((STEP + 1))
    d="$OUT/$server-$rate-$gen-$STEP"
    rm -rf "$d"; mkdir -p "$d"
    SRV=$(mkns "d${STEP}s"); CLI=$(mkns "d${STEP}c")
    case $server in
        lanyard) start_lanyard_dhcp "$d" ;;
        dnsmasq) start_dnsmasq "$d" ;;
        kea) start_kea "$d" ;;
    esac
    # Ready when one exchange completes (max 10 s).
    for ((i = 0; i < 20; i++)); do
        ip netns exec "$CLI" timeout 5 perfdhcp -4 -l c0 -B -n 1 -b mac=02:00:00:00:00:01 >"$d/probe.out" 2>&1 && break
        alive "$SRV_PID" || { cat "$d"/*.out "$d"/*.log 2>/dev/null | tail -20 >&2; die "$server exited"; }
        sleep 0.5
    done
    local c0 c1 t0 t1
    c0=$(cpu_ticks "$SRV_PID"); t0=$(now_s)
    # The shell reports the generator's CPU (its reaped child's cutime+cstime).
    local s
    case $gen in
        perfdhcp)
            "${GEN_PIN[@]}" ip netns exec "$CLI" timeout $((period + 60)) sh -c \
                'perfdhcp -4 -l c0 -B -r "$1" -p "$2" -R "$3" -x t >"$4" 2>&1; awk "{print \$16 + \$17}" /proc/$$/stat >"$5"' \
                sh "$rate" "$period" "$CLIENTS" "$d/perfdhcp.out" "$d/gen.cpu" || true
            t1=$(now_s)
            s=$(awk -f "$BENCH_DIR/tools/perfdhcp-parse.awk" "$d/perfdhcp.out") ;;
        dhcpload)
            "${GEN_PIN[@]}" ip netns exec "$CLI" timeout $((period + 60)) sh -c \
                '"$1" -l c0 -r "$2" -p "$3" -R "$4" >"$5" 2>"$6"; awk "{print \$16 + \$17}" /proc/$$/stat >"$7"' \
                sh "$DHCPLOAD" "$rate" "$period" "$CLIENTS" "$d/dhcpload.out" "$d/dhcpload.err" "$d/gen.cpu" || true
            t1=$(now_s)
            s=$(head -1 "$d/dhcpload.out" 2>/dev/null || true) ;;
    esac
    # Work the server leaves for after the load (lanyard's lease fold)
    # is work for these exchanges: the CPU is read once it is done.
    SETTLE
    c1=$(cpu_ticks "$SRV_PID")
    sleep 0.3
    local leases served
    leases=$(LEASES)
    served=$(SERVED)
    stop_pid "$SRV_PID" 10
    delns "$CLI"; delns "$SRV"
    # shellcheck disable=SC2086
    set -- $s
    local sent_do=${1:-0} recv_ra=${4:-0}
    local achieved drop cpu_k gen_pct
    achieved=$(awk -v r="$recv_ra" -v p="$period" 'BEGIN{printf "%.0f", r / p}')
    drop=$(awk -v s="$sent_do" -v r="$recv_ra" 'BEGIN{ if (s == 0) print 1; else printf "%.4f", 1 - r / s }')
    cpu_k=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" -v n="$recv_ra" 'BEGIN{ if (n == 0) print "-"; else printf "%.1f", (b - a) * 1000 / t / n * 1000 }')
    # dhcpload says its share of a core while it sent (the wait for the
    # last replies after that is nearly idle, and would dilute it);
    # perfdhcp's is taken over its whole run.
    gen_pct=$(sed -n 's/^dhcpload: sending_cpu_pct=//p' "$d/dhcpload.err" 2>/dev/null || true)
    [ -n "$gen_pct" ] || gen_pct=$(awk -v c="$(cat "$d/gen.cpu" 2>/dev/null || echo 0)" -v t="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN{ printf "%.0f", c / t / (b - a) * 100 }')
    echo "$rate $achieved $drop ${5:--} ${6:--} ${7:--} ${8:--} $leases $cpu_k $gen_pct ${11:--}"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$rate" "$achieved" "$drop" "${5:-}" "${6:-}" "${7:-}" "${8:-}" "$leases" "$cpu_k" "$gen_pct" "$gen" "${11:-}" >>"$OUT/steps.tsv"
    note "$(printf '%-8s -r %-6s -> %6s exch/s  drops %6.2f%%  p50 %7s ms  p99 %8s ms  leases on disk %s  CPU %s ms/1000  %s CPU %s%%%s' \
        "$server" "$rate" "$achieved" "$(calc "$drop*100")" "${5:--}" "${6:--}" "$leases" "$cpu_k" "$gen" "$gen_pct" "$served")"
}

ok() { # "rate achieved drop ..." -> 1 if the step kept up
    awk -v r="$1" -v a="$2" -v d="$3" -v lim="$DROP_OK" 'BEGIN{print (d <= lim && a >= 0.9 * r) ? 1 : 0}'
}

# knee SERVER -> sets KNEE (the "step" line of the knee) and PEAK (best achieved)
knee() {
    local server=$1 rate=$START_RATE good="" bad="" line n=0 best=0
    KNEE="" PEAK=0
    while [ "$n" -lt "$MAX_STEPS" ]; do
        n=$((n + 1))
        line=$(step "$server" "$rate")
        # shellcheck disable=SC2086
        set -- $line
        [ "$2" -gt "$best" ] && best=$2
        if [ "$(ok "$1" "$2" "$3")" = 1 ]; then
            good=$rate; KNEE=$line
            [ -n "$bad" ] && break
            [ "$rate" -ge "$MAX_RATE" ] && break
            rate=$((rate * 2))
        else
            bad=$rate
            [ -n "$good" ] && break
            [ "$rate" -le 25 ] && break
            rate=$((rate / 2))
        fi
    done
    local b=0
    while [ -n "$good" ] && [ -n "$bad" ] && [ "$b" -lt "$BISECT" ] && [ "$n" -lt "$MAX_STEPS" ]; do
        b=$((b + 1)); n=$((n + 1))
        rate=$(((good + bad) / 2))
        [ $((bad - good)) -le $((good / 10 + 1)) ] && break
        line=$(step "$server" "$rate")
        # shellcheck disable=SC2086
        set -- $line
        [ "$2" -gt "$best" ] && best=$2
        if [ "$(ok "$1" "$2" "$3")" = 1 ]; then good=$rate; KNEE=$line; else bad=$rate; fi
    done
    PEAK=$best
}

# knee_delays SERVER: the knee's rate KNEE_RUNS times in all (the knee's
# own step and fresh ones); the delays reported at the knee are those of
# the run with the median p99. At the knee the CPUs are full, and one 5 s
# run's p99 varies by a factor of two or more from run to run (lanyard's
# same server code at 51,200/s: 4.7-15.8 ms over 21 runs); the median of
# three is a figure, one run is a draw. Sets K_P50, K_P99, K_P99R (as read by the generator) and
# K_P99S (every run's p99, sorted).
knee_delays() {
    local server=$1 runs=("$KNEE") i line
    for ((i = 1; i < KNEE_RUNS; i++)); do
        runs+=("$(step "$server" "${K_RATE[$server]}")")
    done
    # Sort the runs' lines by p99 (field 5; "-" sorts first) and take the middle one.
    line=$(printf '%s\n' "${runs[@]}" | sort -g -k5,5 | sed -n "$(((${#runs[@]} + 1) / 2))p")
    # shellcheck disable=SC2086
    set -- $line
    K_P50[$server]=$4 K_P99[$server]=$5 K_P99R[$server]=${11:--}
    K_P99S[$server]=$(printf '%s\n' "${runs[@]}" | awk '{print $5}' | sort -g | paste -sd/ -)
}

: >"$OUT/steps.tsv"

# --- generator check: dhcpload and perfdhcp at a rate both reach -------------
# Two runs per generator, interleaved; the better (more completed) counts: a
# server's transient stall (its disk, the shared machine) is not the
# generator's doing, and perfdhcp counts replies later than 1 s as drops.
CHECK_RATE=2000 CHECK_PERIOD=5 CHECK_RUNS=2
if [ -x "${DHCPLOAD:-}" ]; then
    say "DHCP: generator check, dhcpload vs perfdhcp at -r $CHECK_RATE for $CHECK_PERIOD s, best of $CHECK_RUNS, fresh server each"
    for server in lanyard kea; do
        declare -A C_X C_P
        C_X[dhcpload]="" C_X[perfdhcp]=""
        for ((run = 0; run < CHECK_RUNS; run++)); do
            for gen in dhcpload perfdhcp; do
                # shellcheck disable=SC2046
                set -- $(step "$server" "$CHECK_RATE" "$gen" "$CHECK_PERIOD")
                if [ -z "${C_X[$gen]}" ] || [ "${2:-0}" -gt "${C_X[$gen]}" ]; then
                    C_X[$gen]=${2:-0} C_P[$gen]="${4:--} / ${5:--}"
                fi
            done
        done
        rx=$(ratio "${C_X[dhcpload]}" "${C_X[perfdhcp]}")
        agree=$(awk -v r="$rx" 'BEGIN{ if (r == "") print "x"; else print (r >= 0.95 && r <= 1.05) ? 1 : 0 }')
        row "DHCP" "generator check, $server at -r $CHECK_RATE: completed exchanges/s, dhcpload vs perfdhcp" "${C_X[dhcpload]}" "${C_X[perfdhcp]}" "${rx:+${rx}x}" "agree within 5%" "$(verdict "$agree")"
        row "DHCP" "generator check, $server at -r $CHECK_RATE: p50 / p99 delay (ms), dhcpload vs perfdhcp" "${C_P[dhcpload]}" "${C_P[perfdhcp]}" "" "" ""
        unset C_X C_P
    done
    bench_note "DHCP generator check: dhcpload and perfdhcp each against a fresh lanyard and a fresh Kea at -r $CHECK_RATE for $CHECK_PERIOD s, $CLIENTS clients, the better of $CHECK_RUNS interleaved runs each (every run is in the step log); \"lanyard\" column = dhcpload, \"peer\" column = perfdhcp. Delays are each generator's own request->reply times: dhcpload's reply time is when the reply reached its namespace (SO_TIMESTAMPNS), perfdhcp's when it read it (its own processing included)."
else
    warn "no dhcpload binary (DHCPLOAD); the generator check is skipped"
fi

say "DHCP: $GEN, ${CLIENTS} clients, ${PERIOD} s per step, fresh server per step"
declare -A K_X K_D K_P50 K_P99 K_P99R K_P99S K_PEAK K_RATE K_CPU K_GEN O2_X O4_X O4_GEN
# Every server has an (empty) entry, also when BENCH_DHCP_SERVERS runs fewer.
for server in lanyard kea dnsmasq; do
    K_X[$server]="" K_D[$server]="" K_P50[$server]="" K_P99[$server]="" K_PEAK[$server]="" K_RATE[$server]=""
    K_P99R[$server]="" K_P99S[$server]=""
    K_CPU[$server]="" K_GEN[$server]="" O2_X[$server]="" O4_X[$server]="" O4_GEN[$server]=""
done
for server in ${BENCH_DHCP_SERVERS:-lanyard kea dnsmasq}; do
    knee "$server"
    if [ -n "$KNEE" ]; then
        # shellcheck disable=SC2086
        set -- $KNEE
        K_RATE[$server]=$1 K_X[$server]=$2 K_D[$server]=$3 K_CPU[$server]=${9:-} K_GEN[$server]=${10:-}
        knee_delays "$server"  # K_P50, K_P99: the median run's
        # Overload: 2x and 4x the knee's rate.
        set -- $(step "$server" $((K_RATE[$server] * 2)))
        O2_X[$server]=$2
        set -- $(step "$server" $((K_RATE[$server] * 4)))
        O4_X[$server]=$2 O4_GEN[$server]=${10:-}
    else
        K_RATE[$server]="" K_X[$server]="" K_D[$server]="" K_P50[$server]="" K_P99[$server]="" K_CPU[$server]="" K_GEN[$server]=""
        O2_X[$server]="" O4_X[$server]="" O4_GEN[$server]=""
    fi
    for x in "${O2_X[$server]}" "${O4_X[$server]}"; do [ -n "$x" ] && [ "$x" -gt "$PEAK" ] && PEAK=$x; done
    K_PEAK[$server]=$PEAK
    note "$server: knee at -r ${K_RATE[$server]:-none} (${K_X[$server]:-?} exchanges/s, ${K_CPU[$server]:-?} ms CPU per 1,000), peak ${PEAK} exchanges/s; at 2x the knee ${O2_X[$server]:-?}/s, at 4x ${O4_X[$server]:-?}/s"
done

pct() { [ -n "$1" ] && calc "$1*100" | awk '{printf "%.2f %%", $1}'; }
lx=${K_X[lanyard]}
rd=$(ratio "$lx" "${K_X[dnsmasq]}")
rk=$(ratio "$lx" "${K_X[kea]}")
row "DHCP" "exchanges/s at the knee: lanyard vs dnsmasq" "$lx" "${K_X[dnsmasq]}" "${rd:+${rd}x}" ">= 25x" "$(verdict "$(ge "$rd" 25)")"
row "DHCP" "exchanges/s at the knee: lanyard vs Kea" "$lx" "${K_X[kea]}" "${rk:+${rk}x}" ">= 4x" "$(verdict "$(ge "$rk" 4)")"
row "DHCP" "p99 reply delay at the knee (ms), median of $KNEE_RUNS runs: lanyard / Kea" "${K_P99[lanyard]}" "${K_P99[kea]}" "" "< 5 ms" "$(verdict "$(lt "${K_P99[lanyard]}" 5)")"
row "DHCP" "p99 at the knee, each run (ms): lanyard / Kea" "${K_P99S[lanyard]}" "${K_P99S[kea]}" "" "" ""
row "DHCP" "p99 at the knee as the generator read the replies (ms): lanyard / Kea" "${K_P99R[lanyard]}" "${K_P99R[kea]}" "" "" ""
row "DHCP" "p99 reply delay at the knee (ms): lanyard / dnsmasq" "${K_P99[lanyard]}" "${K_P99[dnsmasq]}" "" "" ""
row "DHCP" "p50 reply delay at the knee (ms): lanyard / Kea / dnsmasq" "${K_P50[lanyard]}" "${K_P50[kea]} / ${K_P50[dnsmasq]}" "" "" ""
row "DHCP" "drop ratio at the knee: lanyard / Kea / dnsmasq" "$(pct "${K_D[lanyard]}")" "$(pct "${K_D[kea]}") / $(pct "${K_D[dnsmasq]}")" "" "" ""
rc=$(ratio "${K_CPU[lanyard]}" "${K_CPU[kea]}")
row "DHCP" "server CPU ms per 1,000 exchanges at the knee: lanyard vs Kea" "${K_CPU[lanyard]}" "${K_CPU[kea]}" "${rc:+${rc}x}" "<= 0.25x" "$(verdict "$(lt "$rc" 0.2501)")"
row "DHCP" "server CPU ms per 1,000 exchanges at the knee: lanyard / dnsmasq" "${K_CPU[lanyard]}" "${K_CPU[dnsmasq]}" "" "" ""
r2=$(ratio "${O2_X[lanyard]}" "${O2_X[kea]}")
row "DHCP" "completed exchanges/s at 2x each server's knee: lanyard vs Kea" "${O2_X[lanyard]}" "${O2_X[kea]}" "${r2:+${r2}x}" ">= 3x" "$(verdict "$(ge "$r2" 3)")"
row "DHCP" "completed exchanges/s at 2x the knee, share of the knee: lanyard / Kea" "$(ratio "${O2_X[lanyard]}" "${K_X[lanyard]}")" "$(ratio "${O2_X[kea]}" "${K_X[kea]}")" "" "no collapse (~1)" ""
r4=$(ratio "${O4_X[lanyard]}" "${O4_X[kea]}")
row "DHCP" "completed exchanges/s at 4x each server's knee: lanyard vs Kea / dnsmasq" "${O4_X[lanyard]}" "${O4_X[kea]} / ${O4_X[dnsmasq]}" "${r4:+${r4}x Kea}" "" ""
row "DHCP" "completed exchanges/s at 4x the knee, share of the knee: lanyard / Kea" "$(ratio "${O4_X[lanyard]}" "${K_X[lanyard]}")" "$(ratio "${O4_X[kea]}" "${K_X[kea]}")" "" "no collapse (~1)" ""
row "DHCP" "load generator ($GEN) CPU (% of a core while it sends) at the knee / at 4x: lanyard run" "${K_GEN[lanyard]} / ${O4_GEN[lanyard]}" "Kea run: ${K_GEN[kea]} / ${O4_GEN[kea]}" "" "< 100 (not saturated)" ""
rpk=$(ratio "${K_PEAK[lanyard]}" "${K_PEAK[kea]}")
row "DHCP" "peak completed exchanges/s (any drops): lanyard / Kea / dnsmasq" "${K_PEAK[lanyard]}" "${K_PEAK[kea]} / ${K_PEAK[dnsmasq]}" "${rpk:+${rpk}x Kea}" "" ""
bench_note "DHCP: load generator $GEN (BENCH_DHCP_GEN=dhcpload|perfdhcp); knee = highest $GEN -r whose exchanges completed with <= 1% drops; $CLIENTS clients (-R), ${PERIOD} s per step, a fresh server and empty lease store per step; delays are request->reply of DISCOVER/OFFER and REQUEST/ACK pooled, the reply's time taken when it reached the generator's namespace (dhcpload: SO_TIMESTAMPNS; perfdhcp: when it read it), and at the knee those of the median (by p99) of $KNEE_RUNS runs at the knee's rate; server CPU from /proc/PID/stat from the generator's start until the server's work is done (lanyard's lease fold); generator CPU: dhcpload's share of a core over its sending seconds, perfdhcp's over its whole run; $PLACEMENT. Steps: bench/results/dhcp-steps.tsv (server, rate, achieved, drop, p50, p99, p99 DO, p99 RA, leases, CPU ms/1000, generator CPU %, generator, p99 as the generator read the replies)."
cp "$OUT/steps.tsv" "$BENCH_DIR/results/dhcp-steps.tsv" 2>/dev/null || true

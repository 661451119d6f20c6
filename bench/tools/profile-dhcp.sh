#!/usr/bin/env bash
# Profiles lanyard's DHCP server under perfdhcp at one fixed rate, inside
# namespaces of this run (same topology as cmp/10-dhcp.sh), and prints the
# daemon's CPU per 1,000 exchanges and a `perf report` of where it went.
#
# Usage: sudo LANYARD=target/release/lanyard bench/tools/profile-dhcp.sh RATE [SECONDS] [CLIENTS] [OUT]
# (DHCPLOAD=target/release/examples/dhcpload: our generator instead of
# perfdhcp; NO_PERF=1: CPU only; KEEP_PERF=FILE keeps perf.data;
# SRV_CPUS=1 GEN_CPUS=0: pin the daemon's threads and the generator to
# those CPUs, as taskset -c takes them.)
# Build with symbols first:
#   CARGO_PROFILE_RELEASE_STRIP=none cargo build --release
# Without `perf` on PATH it only measures CPU.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RATE=${1:?rate}; PERIOD=${2:-5}; CLIENTS=${3:-50000}; OUTFILE=${4:-}
[ "$(id -u)" = 0 ] || { echo "needs root (namespaces)" >&2; exit 1; }
: "${LANYARD:?set LANYARD to the release binary}"
LANYARD=$(realpath "$LANYARD")
BENCH_RUN=$(mktemp -d /tmp/lanyard-prof.XXXXXX)
BENCH_SUF=$(printf 'p%x' $(($$ % 65536)))
export BENCH_DIR BENCH_RUN BENCH_SUF LANYARD
: >"$BENCH_RUN/namespaces"; : >"$BENCH_RUN/pids"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
trap 'bench_cleanup; [ -n "${KEEP_PERF:-}" ] && cp "$BENCH_RUN/perf.data" "$KEEP_PERF" 2>/dev/null; rm -rf "$BENCH_RUN"' EXIT
trap 'exit 130' INT TERM

SRV=$(mkns s); CLI=$(mkns c)
d=$BENCH_RUN
LY_SOCK="$d/ly.sock"
PID=$(start_lanyard "$SRV" "$LY_SOCK" "$d/state" "$d/daemon.log")
ly net create bench --mode nat --subnet 10.20.0.0/16 --dhcp-range 10.20.0.2-10.20.255.253 >/dev/null
br=$(ly net show bench -o json | jq -r .bridge)
ip -n "$SRV" link add name bcl0 type veth peer name c0 netns "$CLI"
ip -n "$SRV" link set dev bcl0 master "$br"
ip -n "$SRV" link set dev bcl0 up
ip -n "$CLI" addr add 10.20.255.254/16 dev c0
ip -n "$CLI" link set dev c0 up
for ((i = 0; i < 20; i++)); do
    ip netns exec "$CLI" timeout 5 perfdhcp -4 -l c0 -B -n 1 -b mac=02:00:00:00:00:01 >/dev/null 2>&1 && break
    sleep 0.5
done

if [ -n "${SRV_CPUS:-}" ]; then taskset -a -p -c "$SRV_CPUS" "$PID" >/dev/null; fi
PIN=()
if [ -n "${GEN_CPUS:-}" ]; then PIN=(taskset -c "$GEN_CPUS"); fi
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
c0=$(cpu "$PID")
PERF_PID=
if [ -z "${NO_PERF:-}" ] && command -v perf >/dev/null 2>&1; then
    perf record -F 1999 -g -p "$PID" -o "$d/perf.data" -- sleep "$PERIOD" >/dev/null 2>&1 &
    PERF_PID=$!
fi
# DHCPLOAD=target/release/examples/dhcpload uses our generator instead.
if [ -n "${DHCPLOAD:-}" ]; then
    ip netns exec "$CLI" timeout $((PERIOD + 60)) "${PIN[@]}" \
        "$(realpath "$DHCPLOAD")" -l c0 -r "$RATE" -p "$PERIOD" -R "$CLIENTS" >"$d/gen.line" 2>"$d/gen.err" || true
else
    ip netns exec "$CLI" timeout $((PERIOD + 60)) "${PIN[@]}" \
        perfdhcp -4 -l c0 -B -r "$RATE" -p "$PERIOD" -R "$CLIENTS" -x t >"$d/perfdhcp.out" 2>&1 || true
fi
[ -n "$PERF_PID" ] && wait "$PERF_PID" || true
wait_lease_fold "$d/state"
c1=$(cpu "$PID")
if [ -n "${DHCPLOAD:-}" ]; then
    read -r _ _ _ recv_ra p50 p99 _ <"$d/gen.line"
else
    read -r _ _ _ recv_ra p50 p99 _ < <(awk -f "$BENCH_DIR/tools/perfdhcp-parse.awk" "$d/perfdhcp.out")
fi
{
    echo "# lanyard $(git -C "$BENCH_DIR/.." rev-parse --short HEAD) under perfdhcp -r $RATE -p $PERIOD -R $CLIENTS ($(date -u '+%F %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "# completed exchanges: $recv_ra ($((recv_ra / PERIOD))/s), p50 $p50 ms, p99 $p99 ms"
    echo "# server counters (lanyard_dhcp_received_total / sent_total): $(curl -s --unix-socket "$LY_SOCK" http://lanyard/metrics | awk '/^lanyard_dhcp_(received|sent)_total/ && $2 > 0 {sub(/network="[^"]*",/, "", $1); printf "%s %s  ", $1, $2}')"
    echo "# not served (lanyard_dhcp_dropped_total): $(curl -s --unix-socket "$LY_SOCK" http://lanyard/metrics | awk '/^lanyard_dhcp_dropped_total/ && $2 > 0 {sub(/.*reason="/, "", $1); sub(/".*/, "", $1); printf "%s %s  ", $1, $2}')"
    echo "# daemon CPU: $(awk -v a="$c0" -v b="$c1" -v t="$tck" -v n="$recv_ra" 'BEGIN{ printf "%.0f ms, %.1f ms per 1,000 exchanges", (b-a)*1000/t, n ? (b-a)*1000/t/n*1000 : 0 }')"
    if [ -n "$PERF_PID" ] && [ -s "$d/perf.data" ]; then
        echo "# perf report --no-children --sort comm,sym (top 40)"
        perf report -i "$d/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 || true
        echo
        echo "# per thread"
        perf report -i "$d/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' || true
        echo
        echo "# per thread and object (kernel = system calls and the packets' way through bridge and veth)"
        perf report -i "$d/perf.data" --no-children --sort comm,dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12 || true
    fi
} | tee ${OUTFILE:+"$OUTFILE"}

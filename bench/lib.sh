# Shared helpers of the benchmark scripts; sourced by bench/run and by every
# bench/cmp/*.sh. Nothing here touches the root network namespace: every
# link, address, sysctl and firewall rule is made with `ip -n NS` or
# `ip netns exec NS` inside a namespace this run created (mkns), and
# bench_cleanup removes exactly those namespaces and the processes this run
# started (recorded by pid and start time, so a recycled pid is left alone).
#
# Environment (set by bench/run, exported to the comparison scripts):
#   BENCH_DIR     bench/ itself
#   BENCH_RUN     per-run scratch directory (registries, logs, state)
#   BENCH_SUF     per-run suffix of namespace names (short hex)
#   BENCH_ROWS    TSV file the comparisons append result rows to
#   BENCH_QUICK   1 for --quick
#   LANYARD       the release binary
#   DHCPLOAD      the DHCP load generator (target/release/examples/dhcpload)

set -o pipefail

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
warn() { printf 'bench: warning: %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# Wall-clock seconds with nanoseconds, as a decimal string.
now_s() { date +%s.%N; }
# elapsed START [END]: seconds between two now_s values, 3 decimals.
elapsed() { awk -v a="$1" -v b="${2:-$(now_s)}" 'BEGIN{printf "%.3f", b-a}'; }
# calc EXPR: floating point arithmetic with awk.
calc() { awk "BEGIN{printf \"%s\", $1}"; }
fmt() { awk -v v="$2" -v f="$1" 'BEGIN{printf f, v}'; }

# --- registries -------------------------------------------------------------

NS_LIST() { echo "$BENCH_RUN/namespaces"; }
PID_LIST() { echo "$BENCH_RUN/pids"; }

proc_start() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# mkns ROLE -> prints the namespace name (lb-ROLE-SUF), created with lo up.
mkns() {
    local name="lb-$1-$BENCH_SUF"
    [ ${#name} -le 40 ] || die "namespace name too long: $name"
    ip netns add "$name" || die "ip netns add $name failed"
    echo "$name" >>"$(NS_LIST)"
    ip -n "$name" link set dev lo up
    echo "$name"
}

# track PID: remember a process this run started, for bench_cleanup.
track() { echo "$1 $(proc_start "$1")" >>"$(PID_LIST)"; }

# wait_lease_fold STATE_DIR: waits (at most 30 s) until a lanyard daemon
# has folded its lease journal into the database, which it does once the
# DHCP load stops: that fold is work for the load, so its CPU counts.
wait_lease_fold() {
    local i
    for ((i = 0; i < 300; i++)); do
        [ ! -s "$1/leases.journal" ] && [ ! -e "$1/leases.journal.folding" ] && return 0
        sleep 0.1
    done
    warn "lanyard: the lease journal in $1 was not folded within 30 s"
}

# alive PID: true while PID is the very process we started.
alive() {
    local pid=$1 want
    want=$(awk -v p="$pid" '$1==p{print $2}' "$(PID_LIST)" 2>/dev/null | tail -1)
    [ -n "$want" ] && [ "$(proc_start "$pid")" = "$want" ]
}

# stop_pid PID [SECONDS]: TERM, wait up to SECONDS (default 5), then KILL.
stop_pid() {
    local pid=$1 t=${2:-5} i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < t * 20; i++)); do alive "$pid" || break; sleep 0.05; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    return 0
}

# delns NS: kill what runs inside our namespace, then delete it.
delns() {
    local ns=$1 pid
    ip netns list | awk '{print $1}' | grep -qx "$ns" || return 0
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    sleep 0.05
    ip netns delete "$ns" 2>/dev/null || warn "could not delete namespace $ns"
}

# bench_cleanup: stop every recorded process, delete every recorded namespace.
bench_cleanup() {
    local pid start ns
    if [ -s "$(PID_LIST)" ]; then
        while read -r pid start; do
            [ -n "$pid" ] && [ "$(proc_start "$pid")" = "$start" ] && kill -TERM "$pid" 2>/dev/null
        done <"$(PID_LIST)"
        sleep 0.3
        while read -r pid start; do
            [ -n "$pid" ] && [ "$(proc_start "$pid")" = "$start" ] && kill -KILL "$pid" 2>/dev/null
        done <"$(PID_LIST)"
        : >"$(PID_LIST)"
    fi
    if [ -s "$(NS_LIST)" ]; then
        while read -r ns; do [ -n "$ns" ] && delns "$ns"; done <"$(NS_LIST)"
        : >"$(NS_LIST)"
    fi
}

# --- results ----------------------------------------------------------------

# row SECTION METRIC LANYARD PEER RATIO TARGET VERDICT
# One line of the results table; empty fields are printed as "-".
row() {
    local IFS=$'\t'
    local f=("$@")
    while [ ${#f[@]} -lt 7 ]; do f+=(""); done
    printf '%s\n' "${f[*]}" >>"$BENCH_ROWS"
}

# A free-text note printed under the table.
bench_note() { printf '%s\n' "$*" >>"$BENCH_RUN/notes"; }

# verdict OK?: "met" or "MISSED"; "n/a" when the measurement is missing.
verdict() { case "$1" in 1) echo met ;; 0) echo MISSED ;; *) echo n/a ;; esac; }
# ge A B -> 1 if A >= B (floats), ratio A B -> A/B with 2 decimals.
ge() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "") print "x"; else print (a + 0 >= b + 0) ? 1 : 0 }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "") print "x"; else print (a + 0 < b + 0) ? 1 : 0 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.2f", a / b }'; }

# median [FMT] < numbers (one per word): the median; FMT (default %.3f)
# formats the mean of the two middle ones of an even count.
median() {
    tr ' ' '\n' | grep -v '^$' | sort -g |
        awk -v f="${1:-%.3f}" '{a[NR]=$1} END{ if (NR == 0) print ""; else if (NR % 2) print a[(NR+1)/2]; else printf f "\n", (a[NR/2]+a[NR/2+1])/2 }'
}

# outside HOSTNS OUTNS HOST_CIDR OUT_CIDR: a namespace standing for the
# world beyond the host, joined by a veth: up0 in HOSTNS, eth0 in OUTNS.
outside() {
    ip -n "$1" link add name up0 type veth peer name eth0 netns "$2"
    ip -n "$1" addr add "$3" dev up0
    ip -n "$1" link set dev up0 up
    ip -n "$2" addr add "$4" dev eth0
    ip -n "$2" link set dev eth0 up
}

# --- lanyard ----------------------------------------------------------------

# start_lanyard NS SOCK STATE LOG [DAEMON ARGS...]: runs the daemon in NS;
# prints its pid once the API answers (or fails after 60 s). A comparison
# may set BENCH_SERVER_PIN (e.g. `taskset -c 1`) to place the daemon.
BENCH_SERVER_PIN=()
start_lanyard() {
    local ns=$1 sock=$2 state=$3 log=$4 pid i
    shift 4
    "${BENCH_SERVER_PIN[@]}" ip netns exec "$ns" "$LANYARD" daemon --socket "$sock" --state-dir "$state" "$@" >>"$log" 2>&1 &
    pid=$!
    track "$pid"
    for ((i = 0; i < 1200; i++)); do
        if "$LANYARD" --socket "$sock" net list >/dev/null 2>&1; then
            echo "$pid"
            return 0
        fi
        alive "$pid" || { tail -20 "$log" >&2; die "lanyard daemon exited at start-up"; }
        sleep 0.05
    done
    die "lanyard daemon did not answer on $sock within 60 s"
}

ly() { "$LANYARD" --socket "$LY_SOCK" "$@"; }

# vm_static NS IP/LEN GW: configures eth0 of a VM namespace by hand.
vm_static() {
    ip -n "$1" addr add "$2" dev eth0
    ip -n "$1" link set dev eth0 up
    [ -n "${3:-}" ] && ip -n "$1" route add default via "$3"
    return 0
}

# wait_ping NS IP: up to 10 s for IP to answer from NS.
wait_ping() {
    local i
    for ((i = 0; i < 20; i++)); do
        ip netns exec "$1" ping -n -c 1 -W 1 "$2" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

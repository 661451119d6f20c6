# shellcheck shell=sh disable=SC2034,SC3043
# Shared by the lab's init scripts (busybox ash). Installed as /lab/common.sh.
export PATH=/usr/local/bin:/lab/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

# Machine-readable console lines start with "LAB: ".
say() { echo "LAB: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

lab_mounts() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
    hostname "${1:-lab}"
}

# Every lab.<key>=<value> on the kernel command line becomes $LAB_<key>
# (dots and dashes in the key turn into underscores).
lab_params() {
    local p k v
    for p in $(cat /proc/cmdline); do
        case $p in
            lab.*=*)
                k=${p%%=*}; k=${k#lab.}; v=${p#*=}
                k=$(echo "$k" | tr '.-' '__')
                case $k in
                    *[!a-zA-Z0-9_]*|'') say "ignored parameter $p" ;;
                    *) eval "LAB_$k=\$v" ;;
                esac ;;
        esac
    done
}

# Loads /lib/modules/load.list (computed from modules.dep at build time,
# dependencies first).
lab_load_modules() {
    local dir m n=0 bad=0
    dir=/lib/modules/$(uname -r)
    [ -r /lib/modules/load.list ] || return 0
    while read -r m; do
        [ -n "$m" ] || continue
        if busybox insmod "$dir/$m" 2>/tmp/insmod.err; then
            n=$((n + 1))
        elif ! grep -q 'File exists' /tmp/insmod.err; then
            bad=$((bad + 1))
            say "insmod ${m##*/} failed: $(cat /tmp/insmod.err)"
        fi
    done < /lib/modules/load.list
    say "modules loaded $n failed $bad uptime $(uptime_s)"
}

# Polls a condition command with a bound: lab_wait <tenths-of-seconds> cmd...
lab_wait() {
    local n=$1
    shift
    while [ "$n" -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

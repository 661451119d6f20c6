# shellcheck shell=bash disable=SC2034
# Shared helpers for the lanyard QEMU lab (sourced by lab/setup, lab/guest,
# lab/host-run). Nothing in here touches the host's network configuration.

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_CACHE=${LANYARD_LAB_CACHE:-/var/cache/lanyard-lab}
LAB_KERNEL_META=${LANYARD_LAB_KERNEL_META:-linux-image-cloud-amd64}
LAB_PACKAGES=(qemu-system-x86 busybox-static cpio kmod xz-utils iproute2 nftables)

lab_log() { printf 'lab: %s\n' "$*" >&2; }
lab_die() {
    printf 'lab: error: %s\n' "$*" >&2
    exit "${LAB_DIE_CODE:-1}"
}

# Seconds since the epoch with sub-second precision.
lab_now() { date +%s.%N; }
lab_elapsed() { awk -v a="$1" -v b="$(lab_now)" 'BEGIN { printf "%.1f", b - a }'; }

# Fingerprint of everything an image is built from: the lab scripts, the
# versions of the host packages whose files are copied in, the kernel.
lab_image_key() {
    local kver=$1
    {
        cat "$LAB_DIR/lib.sh" "$LAB_DIR/setup" "$LAB_DIR"/initramfs/*
        dpkg-query -W busybox-static iproute2 nftables kmod libc6 2>/dev/null
        echo "kernel $kver"
    } | sha256sum | cut -d' ' -f1
}

# Reads $LAB_CACHE/lab.env (written by lab/setup) and checks that the images
# exist. Warns (does not fail) when the lab scripts changed since the build.
lab_load_env() {
    local env=$LAB_CACHE/lab.env
    [ -r "$env" ] || LAB_DIE_CODE=3 lab_die "no lab cache at $LAB_CACHE: run lab/setup first"
    # shellcheck disable=SC1090
    . "$env"
    for f in "$LAB_VMLINUZ" "$LAB_GUEST_INITRD" "$LAB_HOST_INITRD"; do
        [ -r "$f" ] || LAB_DIE_CODE=3 lab_die "lab cache incomplete ($f missing): run lab/setup"
    done
    if [ "$(lab_image_key "$LAB_KERNEL_VERSION")" != "$LAB_IMAGE_KEY" ]; then
        lab_log "warning: lab images are older than the lab scripts: run lab/setup"
    fi
}

# Copies an executable (or library) into an image root at the same path,
# together with the shared libraries ldd reports for it.
lab_copy_exe() {
    local root=$1 src=$2 dst=${3:-$2} lib
    mkdir -p "$root$(dirname "$dst")"
    cp -L "$src" "$root$dst"
    chmod 0755 "$root$dst"
    # "libx.so => /path (0x..)" and "/lib64/ld-linux-x86-64.so.2 (0x..)"
    while read -r lib; do
        [ -n "$lib" ] || continue
        if [ ! -e "$root$lib" ]; then
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        fi
    done < <(ldd "$src" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }')
}

# Prints module files (relative to /lib/modules/<ver>) in load order, deps
# first, from a depmod-generated modules.dep. Each spec is a module name
# (e.g. 8021q, nf_tables) or a directory prefix ending in '/' (e.g.
# kernel/net/netfilter/), which selects every module below it. Names that are
# built into the kernel are skipped; unknown names are an error.
lab_module_order() {
    local moddir=$1
    shift
    awk -v specs="$*" -v builtin="$moddir/modules.builtin" '
        function base(p,   n, a, b) {
            n = split(p, a, "/"); b = a[n]
            sub(/\.ko(\.(xz|zst|gz))?$/, "", b); gsub("-", "_", b)
            return b
        }
        function visit(p,   d, k, i) {
            if (p in seen) return
            seen[p] = 1
            k = split(deps[p], d, " ")
            for (i = 1; i <= k; i++) visit(d[i])
            print p
        }
        BEGIN {
            while ((getline line < builtin) > 0) isbuiltin[base(line)] = 1
        }
        {
            key = $1; sub(/:$/, "", key)
            order[++n] = key; path[base(key)] = key; deps[key] = ""
            for (i = 2; i <= NF; i++) deps[key] = deps[key] " " $i
        }
        END {
            m = split(specs, w, " ")
            for (i = 1; i <= m; i++) {
                s = w[i]
                if (s ~ /\/$/) {
                    for (j = 1; j <= n; j++)
                        if (index(order[j], s) == 1) visit(order[j])
                    continue
                }
                gsub("-", "_", s)
                if (s in path) visit(path[s])
                else if (!(s in isbuiltin)) { print "unknown module " s > "/dev/stderr"; bad = 1 }
            }
            exit bad
        }' "$moddir/modules.dep"
}

# Installs the modules selected by the specs (and everything they depend on)
# from the unpacked kernel tree into an image root, decompressing .ko.xz/.zst
# so that busybox insmod can load them, regenerates the depmod files and
# writes /lib/modules/load.list: the preload specs' modules in load order.
#   lab_install_modules <image-root> <kver> "<preload specs>" "<extra specs>"
lab_install_modules() {
    local root=$1 kver=$2 preload=$3 extra=$4
    local src=$LAB_CACHE/kernel/$kver/modroot/lib/modules/$kver
    local dst=$root/lib/modules/$kver m out
    mkdir -p "$dst"
    # shellcheck disable=SC2086
    lab_module_order "$src" $preload $extra > "$root/.mods" || return 1
    while read -r m; do
        mkdir -p "$dst/$(dirname "$m")"
        case $m in
            *.ko.xz)  out=${m%.xz};  xz -dc "$src/$m" > "$dst/$out" ;;
            *.ko.zst) out=${m%.zst}; zstd -qdc "$src/$m" > "$dst/$out" ;;
            *.ko.gz)  out=${m%.gz};  gzip -dc "$src/$m" > "$dst/$out" ;;
            *)        cp "$src/$m" "$dst/$m" ;;
        esac
    done < "$root/.mods"
    rm -f "$root/.mods"
    cp "$src"/modules.builtin "$src"/modules.builtin.modinfo "$src"/modules.order "$dst/" 2>/dev/null || true
    depmod -b "$root" "$kver" || return 1
    # shellcheck disable=SC2086
    lab_module_order "$dst" $preload > "$root/lib/modules/load.list" || return 1
}

# Links every busybox applet into /bin of an image root (never over a file
# that is already there, so real tools copied in earlier win).
lab_install_busybox() {
    local root=$1 bb applet
    bb=$(command -v busybox) || return 1
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
    lab_copy_exe "$root" "$bb" /bin/busybox
    for applet in $("$bb" --list); do
        [ -e "$root/bin/$applet" ] || [ -L "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    # Also at the usual full paths (#!/usr/bin/env ...), where still free.
    for applet in $("$bb" --list-full); do
        case $applet in bin/*) continue ;; esac
        [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
}

# Common skeleton: directories, /etc files.
lab_image_skeleton() {
    local root=$1
    mkdir -p "$root"/{proc,sys,dev,run,tmp,var,etc,root,lab,usr/local/bin}
    ln -sfn ../run "$root/var/run"
    ln -sfn ../tmp "$root/var/tmp"
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
    : > "$root/etc/resolv.conf"
}

# Packs an image root into an uncompressed newc cpio archive (the kernel
# unpacks it faster under TCG than it could decompress it).
lab_pack() {
    local root=$1 out=$2
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$out.tmp" \
        && mv "$out.tmp" "$out"
}

# The qemu command line shared by both modes; the caller appends devices.
lab_qemu_base() {
    local initrd=$1 append=$2 mem=$3
    LAB_QEMU=(qemu-system-x86_64 -accel tcg -M pc -cpu max -m "$mem" -smp "${LAB_SMP:-1}"
        -nodefaults -no-user-config -display none -no-reboot
        -serial stdio
        -kernel "$LAB_VMLINUZ" -initrd "$initrd"
        -append "console=ttyS0 panic=-1 quiet loglevel=3 $append")
}

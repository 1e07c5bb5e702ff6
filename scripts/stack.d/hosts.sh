# shellcheck shell=bash disable=SC2034
# The hosts of a site on one machine (scripts/stack up --hosts, scripts/slurm up
# --hosts). Sourced, never run.
#
# Each host is a network namespace (its own address, routes and ports) joined to the
# others by a bridge, with a UTS namespace (its own hostname) and a mount namespace in
# which the prefix's run/ is a tmpfs of its own: sockets and runtime files are per
# host, as /run is on a real site. Everything else, the prefix's var/ and etc/, /etc,
# the homes and munged's socket, is shared, as a site's shared filesystem and its
# directory service would be. The machine itself (the root namespace) plays UCloud.

SITE_HOSTS=(ctl c1 c2 login1 login2 edge)
SITE_NET=10.213.0
SITE_BRIDGE=ucim-br0
# UCloud (the simulator, in the root namespace) on the bridge.
SITE_UCLOUD_ADDR=$SITE_NET.1
# The mount and UTS namespace handles, bind-mounted files.
SITE_DIR=/run/ucloud-im-site
# ucloud-monitor's event port on each login host (ucloud-notify sends there), and
# the relay balancer's port on each login host (the edge connects there).
SITE_EVENTS_PORT=7380
SITE_RELAY_PORT=8444
SITE_LOGIN_HOSTS=(login1 login2)

host_addr() {
    case $1 in
    ctl) echo "$SITE_NET.10" ;;
    c1) echo "$SITE_NET.11" ;;
    c2) echo "$SITE_NET.12" ;;
    login1) echo "$SITE_NET.21" ;;
    login2) echo "$SITE_NET.22" ;;
    edge) echo "$SITE_NET.30" ;;
    *) die "no host $1 in this site (${SITE_HOSTS[*]})" ;;
    esac
}
host_ns() { echo "ucim-$1"; }

# The words that run a command on a host (its network, hostname and mounts), in
# HOST_ARGV. nsenter execs the command in place, so a PID recorded for it is the
# command's own.
host_argv() {
    HOST_ARGV=(nsenter --net="/run/netns/$(host_ns "$1")" --mount="$SITE_DIR/$1.mnt"
        --uts="$SITE_DIR/$1.uts" --)
}

on_host() {
    host_argv "$1"
    shift
    "${HOST_ARGV[@]}" "$@"
}

site_is_up() { [[ -e /run/netns/$(host_ns ctl) ]]; }

# Makes the bridge, then each host from nothing (a host left by an earlier run is
# removed first, so that no state of it survives).
site_hosts_up() {
    local run=$1 host ns addr
    site_hosts_down
    ip link add "$SITE_BRIDGE" type bridge || die "cannot make the bridge $SITE_BRIDGE (iproute2, root)"
    ip addr add "$SITE_UCLOUD_ADDR/24" dev "$SITE_BRIDGE"
    ip link set "$SITE_BRIDGE" up
    install -d -o root -g root -m 0755 "$SITE_DIR"
    # Namespace handles can only be bind-mounted onto a private mount.
    mount --bind "$SITE_DIR" "$SITE_DIR"
    mount --make-private "$SITE_DIR"
    install -d -o root -g root -m 0755 "$run"
    for host in "${SITE_HOSTS[@]}"; do
        ns=$(host_ns "$host") addr=$(host_addr "$host")
        ip netns add "$ns"
        ip link add "$ns" type veth peer name eth0 netns "$ns"
        ip link set "$ns" master "$SITE_BRIDGE" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via "$SITE_UCLOUD_ADDR"
        : >"$SITE_DIR/$host.mnt"
        : >"$SITE_DIR/$host.uts"
        unshare --mount="$SITE_DIR/$host.mnt" --uts="$SITE_DIR/$host.uts" --propagation private \
            sh -c 'hostname "$1" && mount -t tmpfs -o mode=0755,size=64m "ucim-$1-run" "$2"' \
            site-host "$host" "$run" ||
            die "cannot make the mount and UTS namespaces of host $host"
    done
    say "site hosts up: $(for host in "${SITE_HOSTS[@]}"; do printf '%s=%s ' "$host" "$(host_addr "$host")"; done)on $SITE_BRIDGE"
}

# Kills whatever still runs on a host, then removes every namespace, link and
# mount site_hosts_up made. Quiet when there is nothing to remove.
site_hosts_down() {
    local host ns pids
    for host in "${SITE_HOSTS[@]}"; do
        ns=$(host_ns "$host")
        if [[ -e /run/netns/$ns ]]; then
            mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
            ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
        ip link del "$ns" 2>/dev/null || true
        if [[ -e $SITE_DIR/$host.mnt ]]; then
            umount "$SITE_DIR/$host.mnt" 2>/dev/null || true
            umount "$SITE_DIR/$host.uts" 2>/dev/null || true
            rm -f "$SITE_DIR/$host.mnt" "$SITE_DIR/$host.uts"
        fi
    done
    ip link del "$SITE_BRIDGE" 2>/dev/null || true
    if mountpoint -q "$SITE_DIR" 2>/dev/null; then
        umount "$SITE_DIR" || die "cannot unmount $SITE_DIR"
    fi
    [[ -d $SITE_DIR ]] && rmdir "$SITE_DIR" 2>/dev/null
    return 0
}

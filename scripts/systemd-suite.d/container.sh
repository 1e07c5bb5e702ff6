# shellcheck shell=bash
# A Debian 12 container with systemd as PID 1, for tests: a debootstrap root cached
# between runs, booted with systemd-nspawn on a throwaway overlay (the cached root is
# never written), entered with nsenter. Sourced, never run; needs stack.d/common.sh.
#
# The host's PID 1 need not be systemd and there is no system bus, so the container is
# not registered with machined (--register=no --keep-unit): machinectl, systemctl -M and
# systemd-run -M do not reach it; ct_exec does. nspawn makes payload/ and supervisor/
# cgroups below the cgroup it starts in, so it starts in one of its own, removed by
# ct_cleanup with everything else the container left on the host.

# Bump to rebuild every cached root (e.g. after a change to how it is made).
CT_ROOT_VERSION=1
CT_CACHE=/var/cache/ucloud-im-test
CT_SUITE=bookworm
# What every root holds besides debootstrap's minbase: systemd as init, and the tools
# the suite itself runs inside (runuser is in util-linux, always there).
CT_BASE_PACKAGES=(systemd systemd-sysv dbus)

CT_NAME=
CT_NSPAWN_PID=
CT_PID=
CT_CGROUPS=()
CT_LOG=

ct_host_tools() {
    local missing=()
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v nsenter >/dev/null || missing+=(util-linux)
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} on the host"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# The host's Debian mirror (deb822 or one-line sources), else deb.debian.org.
ct_mirror() {
    local mirror
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null) || true
    [[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
        /etc/apt/sources.list 2>/dev/null) || true
    echo "${mirror:-http://deb.debian.org/debian}"
}

# ct_root PACKAGE...: sets CT_ROOT to a cached root holding the base packages and these.
# Roots are keyed by the version above and the package list, made once (about 40 s)
# under a lock, and replaced atomically; older roots are removed when a new one is made.
ct_root() {
    local packages key dir lock
    packages=$(printf '%s\n' "${CT_BASE_PACKAGES[@]}" "$@" | sort -u | paste -sd, -)
    key=$(printf '%s %s %s' "$CT_ROOT_VERSION" "$CT_SUITE" "$packages" | sha256sum | cut -c1-12)
    dir=$CT_CACHE/$CT_SUITE-v$CT_ROOT_VERSION-$key
    CT_ROOT=$dir/root
    install -d -m 0700 "$CT_CACHE"
    exec {lock}>"$CT_CACHE/lock"
    flock -w 600 "$lock" || die "another run has held $CT_CACHE/lock for 10 minutes"
    if [[ ! -f $dir/complete ]]; then
        local mirror
        mirror=$(ct_mirror)
        say "making the cached container root $dir (debootstrap $CT_SUITE from $mirror: $packages)"
        rm -rf "$dir.new" "$dir"
        install -d -m 0755 "$dir.new"
        if ! debootstrap --variant=minbase --include="$packages" "$CT_SUITE" "$dir.new/root" "$mirror" \
            >"$CT_CACHE/debootstrap.log" 2>&1; then
            rm -rf "$dir.new"
            exec {lock}>&-
            die "debootstrap failed; the end of $CT_CACHE/debootstrap.log: $(tail -n 5 "$CT_CACHE/debootstrap.log")"
        fi
        # The host's apt sources, so that a test may install more if it must.
        cp /etc/apt/sources.list.d/*.sources "$dir.new/root/etc/apt/sources.list.d/" 2>/dev/null || true
        printf '%s\n' "$packages" >"$dir.new/packages"
        touch "$dir.new/complete"
        mv "$dir.new" "$dir"
        local old
        for old in "$CT_CACHE/$CT_SUITE"-v*; do
            [[ $old == "$dir" || ! -d $old ]] || rm -rf "$old"
        done
    fi
    exec {lock}>&-
}

# Removes a cgroup directory and everything below it, deepest first; processes left in
# it (there should be none) are named rather than silently kept.
ct_remove_cgroup() {
    local top=$1 dir
    [[ -d $top ]] || return 0
    while IFS= read -r dir; do
        rmdir "$dir" 2>/dev/null || {
            say "cannot remove cgroup $dir; processes in it: $(tr '\n' ' ' <"$dir/cgroup.procs" 2>/dev/null)"
            return 1
        }
    done < <(find "$top" -depth -type d)
}

# ct_sweep PREFIX: removes what a run killed outright (SIGKILL, a crash of the machine
# is different: /run and the cgroups are gone then) left behind: the cgroups and the
# propagation directory of machines named PREFIX<pid> whose pid no longer runs.
ct_sweep() {
    local prefix=$1 dir pid
    for dir in /sys/fs/cgroup/"$prefix"* /sys/fs/cgroup/{systemd,unified}/"$prefix"* \
        /run/systemd/nspawn/propagate/"$prefix"*; do
        [[ -d $dir ]] || continue
        pid=${dir##*/"$prefix"}
        [[ $pid =~ ^[0-9]+$ ]] || continue
        kill -0 "$pid" 2>/dev/null && continue
        if [[ $dir == /sys/* ]]; then
            ct_remove_cgroup "$dir" || say "left $dir as it is"
        else
            rm -rf "$dir"
        fi
    done
}

# ct_boot NAME LOG [NSPAWN ARGUMENT...]: boots CT_ROOT as machine NAME and waits until
# systemd reports `running`. Sets CT_NSPAWN_PID and CT_PID (the container's PID 1).
ct_boot() {
    CT_NAME=$1 CT_LOG=$2
    shift 2
    [[ -n ${CT_ROOT:-} && -d $CT_ROOT ]] || die "ct_boot: no root (call ct_root first)"
    local hierarchy
    CT_CGROUPS=()
    for hierarchy in systemd unified; do
        [[ -d /sys/fs/cgroup/$hierarchy ]] || continue
        [[ -e /sys/fs/cgroup/$hierarchy/cgroup.procs ]] || continue
        install -d "/sys/fs/cgroup/$hierarchy/$CT_NAME"
        CT_CGROUPS+=("/sys/fs/cgroup/$hierarchy/$CT_NAME")
    done
    # A pure cgroup v2 host mounts the unified hierarchy at /sys/fs/cgroup itself.
    if ((${#CT_CGROUPS[@]} == 0)) && [[ -e /sys/fs/cgroup/cgroup.procs ]]; then
        install -d "/sys/fs/cgroup/$CT_NAME"
        CT_CGROUPS+=("/sys/fs/cgroup/$CT_NAME")
    fi
    ((${#CT_CGROUPS[@]})) || die "found no cgroup hierarchy under /sys/fs/cgroup to start the container in"
    (
        for hierarchy in "${CT_CGROUPS[@]}"; do
            echo "$BASHPID" >"$hierarchy/cgroup.procs"
        done
        exec systemd-nspawn --quiet --boot --volatile=overlay --register=no --keep-unit \
            --console=pipe --directory="$CT_ROOT" --machine="$CT_NAME" "$@"
    ) </dev/null >"$CT_LOG" 2>&1 &
    CT_NSPAWN_PID=$!
    local i children
    for ((i = 0; i < 200; i++)); do
        kill -0 "$CT_NSPAWN_PID" 2>/dev/null || die "systemd-nspawn exited at once: $(tail -n 5 "$CT_LOG")"
        children=$(cat "/proc/$CT_NSPAWN_PID/task/$CT_NSPAWN_PID/children" 2>/dev/null) || true
        CT_PID=${children%% *}
        # The child is the container's init once it has exec'ed systemd.
        [[ -n $CT_PID && $(cat "/proc/$CT_PID/comm" 2>/dev/null) == systemd ]] && break
        CT_PID=
        sleep 0.05
    done
    [[ -n $CT_PID ]] || die "the container's systemd did not start within 10 s: $(tail -n 5 "$CT_LOG")"
    # For the first moments systemctl cannot reach the manager (it prints nothing) or
    # finds no /run/systemd/system yet (it says offline); then --wait waits for the boot.
    local state=
    for ((i = 0; i < 300; i++)); do
        state=$(ct_exec systemctl is-system-running --wait 2>/dev/null) || true
        [[ -n $state && $state != offline ]] && break
        sleep 0.1
    done
    [[ $state == running ]] ||
        die "the container's systemd is '${state:-unreachable}' after 30 s, not running; failed units: $(ct_exec systemctl --failed --no-legend --plain 2>&1 | tr '\n' ';')"
}

# ct_exec COMMAND...: runs a command in the container's namespaces (not as a unit: no
# sandbox, no journal) with a clean environment, and returns its exit status.
ct_exec() {
    [[ -n $CT_PID ]] || die "ct_exec: no container"
    # --root and --wd without a path: the container's own (a path would be opened on
    # the host's side, before nsenter enters the namespaces).
    nsenter --target "$CT_PID" --all --root --wd \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

# ct_run [systemd-run OPTION...] -- COMMAND...: runs a command as a transient service in
# the container (its sandbox, its journal) and returns its exit status.
ct_run() {
    ct_exec systemd-run --wait --pipe --quiet --collect "$@"
}

# The host's path of a file in the container (the container's mount namespace, as its
# PID 1 sees it; the cached root is never written through it).
ct_path() { printf '/proc/%s/root%s\n' "$CT_PID" "$1"; }

# Halts the container cleanly (SIGTERM to nspawn), forcing it after 20 s.
ct_shutdown() {
    [[ -n $CT_NSPAWN_PID ]] || return 0
    local i
    kill -TERM "$CT_NSPAWN_PID" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$CT_NSPAWN_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
        say "the container did not halt within 20 s; forcing it"
        kill -TERM "$CT_NSPAWN_PID" 2>/dev/null || true
        sleep 2
        kill -KILL "$CT_NSPAWN_PID" 2>/dev/null || true
    fi
    wait "$CT_NSPAWN_PID" 2>/dev/null || true
    CT_NSPAWN_PID='' CT_PID=''
}

# Everything the container left on the host, whatever happened: the nspawn process, its
# cgroups, the propagation directory. Safe to call twice.
ct_cleanup() {
    local status=0 cgroup
    ct_shutdown
    for cgroup in "${CT_CGROUPS[@]}"; do
        ct_remove_cgroup "$cgroup" || status=1
    done
    CT_CGROUPS=()
    if [[ -n $CT_NAME ]]; then
        rm -rf "/run/systemd/nspawn/propagate/$CT_NAME"
        if grep -q "$CT_NAME" /proc/self/mountinfo; then
            say "mounts left by the container: $(grep "$CT_NAME" /proc/self/mountinfo | tr '\n' ';')"
            status=1
        fi
    fi
    return $status
}

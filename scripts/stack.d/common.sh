# shellcheck shell=bash disable=SC2034
# Shared by the stack scripts: where things are and how to say what went wrong.
# Sourced, never run.

# The clone's root, whatever directory the caller is in.
STACK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# Runtime files of the running stack: certificates, the simulator's state, logs, PIDs.
STACK_RUN="$STACK_REPO/target/stack"
STACK_ENV="$STACK_RUN/stack.env"
# The throwaway root-owned install prefix; the release build bakes it in. One per
# machine unless UCLOUD_IM_PREFIX names another (CI takes a new one for every run, so a
# missing install step cannot hide behind files an earlier run left).
PREFIX=${UCLOUD_IM_PREFIX:-/opt/ucloud-im-stack}
PROVIDER=hpc
# Jobs' web interfaces: app-JOB-RANK.$WEB_DOMAIN (a .test name: never resolved).
WEB_DOMAIN=apps.ucloud-im.test

GATEWAY_USER=ucloud-gw
SERVICE_USER=ucloud-svc
SENDER_USER=ucloud-send
MONITOR_USER=ucloud-mon
OUTBOX_GROUP=ucloud-outbox
NOLOGIN_USER=ucim-nologin
# The start of every Unix group and Slurm account ucloud-project makes for projects.
PROJECT_PREFIX=ucp-
# UCloud name and local account of each test user the stack maps.
STACK_USERS=("AliceHansen#1001:ucim-alice" "BobNielsen#2002:ucim-bob")

# The programs the stack starts, in start order; `down` stops them in reverse.
SERVICES=(sim sender monitor gateway)

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

# An absolute path of plain names: it is pasted into site.conf and unit-like command
# lines, and the dispatcher's path checks walk it.
check_prefix_name() {
    [[ $PREFIX =~ ^(/[A-Za-z0-9_][A-Za-z0-9._-]*)+$ ]] ||
        die "UCLOUD_IM_PREFIX='$PREFIX' is not an absolute path of plain names (letters, digits, . _ -)"
}
check_prefix_name

need_root() {
    [[ $(id -u) == 0 ]] || die "run me as root: the stack creates accounts and installs a setuid binary"
}

pid_file() { printf '%s/pids/%s.pid\n' "$STACK_RUN" "$1"; }
log_file() { printf '%s/logs/%s.log\n' "$STACK_RUN" "$1"; }

# The program name a service's recorded PID must still run, so that a PID reused by
# an unrelated process after a reboot or a crash is never signalled.
service_comm() {
    case $1 in
    sim) echo ucloud-sim ;;
    sender) echo ucloud-sender ;;
    monitor) echo ucloud-monitor ;;
    gateway) echo systemd-socket ;; # comm is cut at 15 bytes
    *) die "unknown service $1" ;;
    esac
}

# Prints the PID of a service when it runs (zombies count as gone: they only wait to
# be reaped by whoever became their parent).
running_pid() {
    local file pid state comm
    file=$(pid_file "$1")
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    [[ $state != Z* ]] || return 1
    comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
    [[ $comm == "$(service_comm "$1")"* ]] || return 1
    echo "$pid"
}

# Whether the recorded PID is alive, whatever it runs yet: right after a start it may
# still be setsid or setpriv on its way to exec the service.
alive() {
    local pid state
    pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

# Stops one service by its recorded PID: TERM, up to 5 s, then KILL.
stop_service() {
    local name=$1 pid i
    if pid=$(running_pid "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            running_pid "$name" >/dev/null || break
            sleep 0.1
        done
        if running_pid "$name" >/dev/null; then
            say "$name (pid $pid) ignored SIGTERM for 5 s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 20; i++)); do
                running_pid "$name" >/dev/null || break
                sleep 0.1
            done
        fi
        running_pid "$name" >/dev/null && die "$name (pid $pid) does not stop"
        say "stopped $name (pid $pid)"
    fi
    rm -f "$(pid_file "$name")"
}

port_is_free() { [[ -z $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }

# The last lines of a service's log, to show with an error.
log_tail() {
    local file
    file=$(log_file "$1")
    if [[ -s $file ]]; then
        echo "--- last lines of $file:"
        tail -n 20 "$file"
        echo "---"
    else
        echo "(its log $file is empty)"
    fi
}

# shellcheck shell=bash disable=SC2034 # sets what scripts/stack's functions read
# scripts/stack up --hosts: the stack as a site of hosts (stack.d/hosts.sh) instead of
# one machine. Sourced by scripts/stack after its own functions, never run.
#
#   ctl      slurmdbd, slurmctld (whose hooks run ucloud-notify here), ucloud-project
#   c1, c2   slurmd, one node each
#   login1, login2   each: the registry socket, the balancer-facing gateway socket
#            (dispatcher and plugins), a relay ucloud-lb on TCP for the edge alone,
#            ucloud-sender and ucloud-monitor (both run everywhere, one of each acts:
#            the lease decides), ucloud-du
#   edge     ucloud-lb, the public address, in front of both login hosts
#
# UCloud (the simulator) stays on the machine itself, on the bridge's address.

# shellcheck source=hosts.sh
. "$(dirname "${BASH_SOURCE[0]}")/hosts.sh"

# The site's services, in start order; `down` stops them in reverse. NAME@HOST.
SITE_SERVICES=(sim projects@ctl
    sender@login1 sender@login2 registry@login1 registry@login2
    monitor@login1 monitor@login2 gateway-lb@login1 gateway-lb@login2
    relay@login1 relay@login2 lb@edge)

eval "$(declare -f service_comm | sed '1s/^service_comm/machine_service_comm/')"
service_comm() {
    case $1 in
    relay@*) echo ucloud-lb ;;
    *@*) machine_service_comm "${1%@*}" ;;
    *) machine_service_comm "$1" ;;
    esac
}

# Starts a service on a host (start_service's log and PID, nsenter's exec keeps it).
start_on() {
    host_argv "$1"
    local name=$2
    shift 2
    start_service "$name" "${HOST_ARGV[@]}" "$@"
}

# The balancers' own CA (not the public one): the edge proves itself to each login
# host's relay with a certificate from it (ucloud-lb.conf(5), ANOTHER HOST).
ensure_site_keys() {
    local dir=$STACK_RUN/site-ca name addr
    install -d -m 0700 "$dir"
    if [[ ! -s $dir/ca.pem || ! -s $dir/ca.key ]]; then
        say "making the site's balancer CA (ECDSA P-256)"
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=ucloud-im site balancer CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        rm -f "$dir"/*.crt
    fi
    for name in edge "${SITE_LOGIN_HOSTS[@]}"; do
        [[ -s $dir/$name.crt && -s $dir/$name.key ]] && continue
        if [[ $name == edge ]]; then
            addr="extendedKeyUsage=clientAuth"
        else
            addr="subjectAltName=IP:$(host_addr "$name"),DNS:$name"$'\n'"extendedKeyUsage=serverAuth"
        fi
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null
        openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 825 -out "$dir/$name.crt" -extfile <(
                printf '%s\n' "$addr" "basicConstraints=critical,CA:FALSE" \
                    "keyUsage=critical,digitalSignature"
            ) 2>/dev/null
        rm -f "$dir/$name.csr"
    done
    chmod 0600 "$dir"/*.key
}

# The edge's configuration and one relay's per login host (shared etc/, so each
# host's file carries its name).
install_site_lb() {
    local etc=$PREFIX/etc/ucloud-im dir=$STACK_RUN/site-ca host
    put 0644 root:root "$dir/ca.pem" "$etc/lb/site-ca.pem"
    put 0644 root:root "$dir/edge.crt" "$etc/lb/edge.pem"
    put 0640 "root:$LB_USER" "$dir/edge.key" "$etc/lb/edge.key"
    {
        echo "# Written by scripts/stack up --hosts; see ucloud-lb.conf(5). The edge."
        echo "listen = $(host_addr edge):$LB_PORT"
        echo "metrics = $(host_addr edge):$LB_METRICS_PORT"
        echo "certificate = $etc/lb/tls.pem $etc/lb/tls.key"
        echo "health_interval = 0.5"
        echo "health_timeout = 0.5"
        echo "health_fall = 2"
        for host in "${SITE_LOGIN_HOSTS[@]}"; do
            printf '%s\n' "[backend $host]" "address = $(host_addr "$host"):$SITE_RELAY_PORT" \
                "proxy_protocol = yes" "tls_ca = $etc/lb/site-ca.pem" \
                "tls_certificate = $etc/lb/edge.pem $etc/lb/edge.key" \
                "tls_name = $(host_addr "$host")"
        done
    } >"$STACK_RUN/lb/lb.conf"
    put 0644 root:root "$STACK_RUN/lb/lb.conf" "$etc/lb.conf"
    for host in "${SITE_LOGIN_HOSTS[@]}"; do
        put 0644 root:root "$dir/$host.crt" "$etc/lb/relay-$host.pem"
        put 0640 "root:$LB_USER" "$dir/$host.key" "$etc/lb/relay-$host.key"
        printf '%s\n' "# Written by scripts/stack up --hosts; the relay on $host (ucloud-lb.conf(5))." \
            "listen = $(host_addr "$host"):$SITE_RELAY_PORT" \
            "certificate = $etc/lb/relay-$host.pem $etc/lb/relay-$host.key" \
            "client_ca = $etc/lb/site-ca.pem" "max_per_client = 4096" "health_interval = 1" \
            "[backend gateway]" "address = unix:$GATEWAY_LB_SOCKET" "proxy_protocol = yes" \
            >"$STACK_RUN/lb/relay-$host.conf"
        put 0644 root:root "$STACK_RUN/lb/relay-$host.conf" "$etc/relay-$host.conf"
    done
}

# A login host: the registry socket, then the sender, monitor, gateway socket and relay.
start_registry_on() {
    local host=$1
    on_host "$host" install -d -o root -g root -m 0755 "$PREFIX/run/ucloud-im"
    on_host "$host" rm -f "$REGISTRY_SOCKET"
    start_on "$host" "registry@$host" systemd-socket-activate --inetd -a -l "$REGISTRY_SOCKET" \
        "$PREFIX/usr/bin/ucloud-registry" serve
    wait_for "registry@$host" 20 on_host "$host" test -S "$REGISTRY_SOCKET"
    on_host "$host" chmod 0666 "$REGISTRY_SOCKET"
}

start_sender_on() {
    local host=$1
    start_on "$host" "sender@$host" setpriv --reuid="$SENDER_USER" --regid="$SENDER_USER" \
        --init-groups "$PREFIX/usr/bin/ucloud-sender"
    sleep 0.2
    alive "sender@$host" || die "the sender on $host exited at once; $(log_tail "sender@$host")"
}

# Polls every 30 s only: within a second, a job's changes can reach UCloud only
# through the controller's events, which the site's tests and benchmark measure.
start_monitor_on() {
    local host=$1
    start_on "$host" "monitor@$host" setpriv --reuid="$MONITOR_USER" --regid="$MONITOR_USER" \
        --init-groups --bounding-set=-all --no-new-privs "$PREFIX/usr/bin/ucloud-monitor" \
        --usage-interval 5 --interval 30 --no-events --listen "$(host_addr "$host"):$SITE_EVENTS_PORT"
    sleep 0.2
    alive "monitor@$host" || die "the monitor on $host exited at once; $(log_tail "monitor@$host")"
}

start_gateway_on() {
    local host=$1
    on_host "$host" rm -f "$GATEWAY_LB_SOCKET"
    start_on "$host" "gateway-lb@$host" systemd-socket-activate -l "$GATEWAY_LB_SOCKET" --inetd -a \
        setpriv --reuid="$GATEWAY_USER" --regid="$GATEWAY_USER" --init-groups \
        --bounding-set=-all,+setuid,+setgid,+setpcap \
        "$PREFIX/usr/bin/ucloud-gateway" --proxy-protocol
    wait_for "gateway-lb@$host" 20 on_host "$host" test -S "$GATEWAY_LB_SOCKET"
    on_host "$host" chown "root:$LB_USER" "$GATEWAY_LB_SOCKET"
    on_host "$host" chmod 0660 "$GATEWAY_LB_SOCKET"
    start_on "$host" "relay@$host" setpriv --reuid="$LB_USER" --regid="$LB_USER" --init-groups \
        --bounding-set=-all --no-new-privs \
        "$PREFIX/usr/bin/ucloud-lb" --config "$PREFIX/etc/ucloud-im/relay-$host.conf"
    sleep 0.2
    alive "relay@$host" || die "the relay on $host exited at once; $(log_tail "relay@$host")"
}

start_edge() {
    start_on edge lb@edge setpriv --reuid="$LB_USER" --regid="$LB_USER" --init-groups \
        --bounding-set=-all --no-new-privs \
        "$PREFIX/usr/bin/ucloud-lb" --config "$PREFIX/etc/ucloud-im/lb.conf"
    wait_for lb@edge 20 lb_answers
    say "the edge balancer is up on https://$PUBLIC_ADDR:$LB_PORT, in front of ${SITE_LOGIN_HOSTS[*]}"
}

stop_site_services() {
    local index
    for ((index = ${#SITE_SERVICES[@]} - 1; index >= 0; index--)); do
        stop_service "${SITE_SERVICES[index]}"
    done
}

write_site_env() {
    local host names
    names=${SITE_HOSTS[*]}
    {
        printf '%s\n' "# A site of hosts (scripts/stack up --hosts); run a command on host H with"
        printf '%s\n' "# nsenter --net=/run/netns/NS --mount=SITE_DIR/H.mnt --uts=SITE_DIR/H.uts"
        printf 'UCLOUD_IM_HOSTS=%s\n' "$(quote "$names")"
        printf 'UCLOUD_IM_SITE_DIR=%s\n' "$(quote "$SITE_DIR")"
        printf 'UCLOUD_IM_SITE_EVENTS_PORT=%s\n' "$(quote "$SITE_EVENTS_PORT")"
        for host in "${SITE_HOSTS[@]}"; do
            printf 'UCLOUD_IM_HOST_%s_NS=%s\n' "$host" "$(quote "$(host_ns "$host")")"
            printf 'UCLOUD_IM_HOST_%s_ADDR=%s\n' "$host" "$(quote "$(host_addr "$host")")"
        done
    } >>"$STACK_ENV"
}

up_hosts() {
    local take_over=$1
    { command -v nsenter && command -v ip; } >/dev/null ||
        die "nsenter (util-linux) and ip (iproute2) are needed for --hosts"
    prepare_up "$take_over"
    SIM_ADDR=$SITE_UCLOUD_ADDR PUBLIC_ADDR=$(host_addr edge)
    ensure_keys
    choose_ports
    choose_lb_ports
    install_prefix
    printf '%s\n' "# ucloud-notify on the controller hands Slurm's events to the monitors on the" \
        "# login hosts, with a munge credential (ucloud-notify(8))." \
        "monitor_events = $(for host in "${SITE_LOGIN_HOSTS[@]}"; do printf '%s:%s ' "$(host_addr "$host")" "$SITE_EVENTS_PORT"; done)" \
        "# One sender and one monitor act at a time, the holders of their leases; a" \
        "# host that dies is replaced within lease_seconds + clock_skew_seconds + a third" \
        "# of lease_seconds (ucloud-sender(8), HOSTS): 7.7 s here." \
        "lease_seconds = 5" "clock_skew_seconds = 1" \
        >>"$STACK_RUN/site.conf"
    put 0644 root:root "$STACK_RUN/site.conf" "$PREFIX/etc/ucloud-im/site.conf"
    ensure_lb_keys
    ensure_site_keys
    install_lb
    install_site_lb
    install_sender_state
    install_monitor
    install_du
    install_projects
    # Whatever ran before, the machine's stack or an earlier site, stops first.
    stop_machine_services
    stop_site_services
    unmount_gates
    site_hosts_up "$PREFIX/run"
    "$STACK_REPO/scripts/slurm" up --hosts
    SIM_PROVIDER_URL=https://$PUBLIC_ADDR:$LB_PORT
    start_sim
    local host
    for host in "${SITE_LOGIN_HOSTS[@]}"; do start_sender_on "$host"; done
    # Root's work for projects (groups, Slurm accounts) runs on the controller.
    # shellcheck disable=SC2016 # expanded by that shell
    start_on ctl projects@ctl bash -c 'exec "$1" --watch >>"$2"' ucloud-project-watch \
        "$PREFIX/usr/bin/ucloud-project" "$PREFIX/var/log/ucloud-im/audit.log"
    for host in "${SITE_LOGIN_HOSTS[@]}"; do start_registry_on "$host"; done
    REGISTRY_HOST=login1
    map_users
    DU_HOST=login1
    # shellcheck disable=SC2119
    du_run || die "ucloud-du could not measure every drive; see the audit log"
    for host in "${SITE_LOGIN_HOSTS[@]}"; do start_monitor_on "$host"; done
    for host in "${SITE_LOGIN_HOSTS[@]}"; do start_gateway_on "$host"; done
    start_edge
    # No direct gateway socket on a site: every call goes through the edge.
    GATEWAY_URL=https://$PUBLIC_ADDR:$LB_PORT
    write_env
    write_site_env
    say "the site is up; its hosts and addresses are in $STACK_ENV"
}

# A host that died (tests, benchmarks) back: its link up, its services started again
# as up --hosts starts them. Slurm's daemons come back through scripts/slurm.
restart_host() {
    local host=${1:-}
    need_root
    [[ -n $host ]] || die "restart-host takes a host: ${SITE_HOSTS[*]}"
    host_addr "$host" >/dev/null
    site_is_up || die "no site is up: scripts/stack up --hosts"
    lock_prefix
    # shellcheck source=/dev/null
    . "$STACK_RUN/ports"
    # shellcheck source=/dev/null
    . "$STACK_RUN/lb-ports"
    SIM_ADDR=$SITE_UCLOUD_ADDR PUBLIC_ADDR=$(host_addr edge)
    ip link set "$(host_ns "$host")" up
    local name
    for name in "${SITE_SERVICES[@]}"; do
        [[ $name == *@"$host" ]] && stop_service "$name"
    done
    case $host in
    login1 | login2)
        start_registry_on "$host"
        start_sender_on "$host"
        start_monitor_on "$host"
        start_gateway_on "$host"
        ;;
    edge) start_edge ;;
    ctl | c1 | c2)
        "$STACK_REPO/scripts/slurm" up --hosts
        if [[ $host == ctl ]]; then
            # shellcheck disable=SC2016 # expanded by that shell
            start_on ctl projects@ctl bash -c 'exec "$1" --watch >>"$2"' ucloud-project-watch \
                "$PREFIX/usr/bin/ucloud-project" "$PREFIX/var/log/ucloud-im/audit.log"
        fi
        ;;
    esac
    say "host $host is back"
}

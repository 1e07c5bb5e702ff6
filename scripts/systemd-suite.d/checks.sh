# shellcheck shell=bash
# The checks of scripts/systemd-suite. Sourced, never run; needs stack.d/common.sh and
# container.sh, and sets nothing on the host outside target/systemd-suite but the
# container's cgroups, which ct_cleanup removes.
#
# shellcheck disable=SC2016 # jq filters are single-quoted on purpose
# shellcheck disable=SC2154 # deb and keep_going are the caller's (scripts/systemd-suite)

SUITE_RUN=$STACK_REPO/target/systemd-suite
SUITE_PROVIDER=hpc
# A person with a mapping made by the admin, and one who connects with a ticket.
SUITE_ALICE='AliceHansen#1001' SUITE_ALICE_LOCAL=alice
SUITE_BOB='BobNielsen#2002' SUITE_BOB_LOCAL=bob
# Every unit the package ships, as `systemd-analyze security` and is-failed see them.
SUITE_SERVICES=(ucloud-gateway@.service ucloud-gateway-lb@.service ucloud-lb.service
    ucloud-monitor.service ucloud-registry@.service ucloud-registry-expire.service
    ucloud-sender.service ucloud-du.service ucloud-project.service)
# Where the site keeps project drives (site.conf's project_base; made by the admin).
SUITE_PROJECT_BASE=/srv/projects

# What the site enables (README, "Enabling the units"), and the direct gateway socket,
# which the README leaves to a site that needs it.
ENABLED="ucloud-lb.socket ucloud-lb.service ucloud-gateway-lb.socket ucloud-registry.socket
    ucloud-registry-expire.timer ucloud-sender.service ucloud-monitor.socket ucloud-monitor.service
    ucloud-gateway.socket ucloud-du.timer ucloud-project.path ucloud-project.timer"

SIM_PID=
failures=0
check_number=0

# Prints a check's output under it, each line indented.
indent() {
    local line
    while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$1"
}

# check NAME COMMAND...: one numbered check; a failure stops the suite unless
# --keep-going, and always fails it.
check() {
    local name=$1 out
    shift
    check_number=$((check_number + 1))
    # In a subshell: a check changes nothing of the suite's own state.
    if out=$("$@" 2>&1); then
        printf 'ok %d - %s\n' "$check_number" "$name"
        [[ -z $out ]] || indent "$out"
        return 0
    fi
    printf 'not ok %d - %s\n' "$check_number" "$name"
    indent "$out"
    failures=$((failures + 1))
    ((keep_going)) || die "stopping at the first failure (--keep-going runs every check); logs in $SUITE_RUN"
}

# Says why a check fails (on stderr, which check shows) and fails.
fail() {
    printf '%s\n' "$*" >&2
    return 1
}

suite_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $CT_PID ]] && ((status != 0)); then
        # What a reader needs to see why: the container's failed units and journal tail.
        ct_exec systemctl --failed --no-legend --plain >"$SUITE_RUN/failed-units.txt" 2>&1 || true
        ct_exec journalctl --no-pager -o short-precise >"$SUITE_RUN/journal.txt" 2>&1 || true
        say "the container's journal is in $SUITE_RUN/journal.txt"
    fi
    ct_cleanup || status=1
    if [[ -n $SIM_PID ]]; then
        kill -TERM "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
    fi
    exit "$status"
}

# --- host side: tools, the package, the simulator --------------------------------------

host_tools() {
    local -A package_of=([openssl]=openssl [curl]=curl [jq]=jq [ss]=iproute2 [dpkg-deb]=dpkg
        [sha256sum]=coreutils)
    local missing=() command
    for command in "${!package_of[@]}"; do
        command -v "$command" >/dev/null || missing+=("${package_of[$command]}")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]} on the host"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
    ct_host_tools
}

build_package() {
    if [[ -z $deb ]]; then
        say "building the package (scripts/package --deb-only)"
        deb=$("$STACK_REPO/scripts/package" --deb-only | tail -n 1) || die "scripts/package --deb-only failed"
    fi
    [[ -f $deb ]] || die "no package at $deb"
    dpkg-deb --info "$deb" >/dev/null || die "$deb is not a Debian package"
    say "testing $deb"
    # The simulator is a test program, not in the package. The same build as
    # scripts/package's (nothing to do after it), whose paths are the site's.
    (cd "$STACK_REPO" && env -u UCLOUD_IM_ROOT -u SOURCE_DATE_EPOCH cargo build --release --locked --workspace --bins) ||
        die "building ucloud-sim failed"
    SIM=${CARGO_TARGET_DIR:-$STACK_REPO/target}/release/ucloud-sim
}

# The package's Depends (the first of each set of alternatives), for the cached root.
package_depends() {
    dpkg-deb --field "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' |
        grep -v '^$'
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

pick_port() {
    local port tries
    for ((tries = 0; tries < 100; tries++)); do
        port=$((20000 + RANDOM % 20000))
        [[ " $* " == *" $port "* ]] && continue
        port_free "$port" && {
            echo "$port"
            return
        }
    done
    die "found no free TCP port on 127.0.0.1"
}

# issue_localhost_cert CA_DIR DIR: a certificate for localhost and 127.0.0.1 in DIR
# (tls.key, tls.pem), issued by the suite's CA in CA_DIR.
issue_localhost_cert() {
    local ca=$1 dir=$2
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in "$dir/tls.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
        -days 2 -out "$dir/tls.pem" -extfile <(
            printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth"
        ) 2>/dev/null
}

# A throwaway CA, the simulator's certificate, and UCloud's token signing key, as
# scripts/stack makes them, new for every run.
make_keys() {
    local ca=$SUITE_RUN/ca sim=$SUITE_RUN/sim
    install -d -m 0700 "$ca" "$sim" "$sim/state"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$ca/ca.key" -out "$ca/ca.pem" -days 2 -subj "/CN=ucloud-im systemd suite CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    issue_localhost_cert "$ca" "$sim"
    # The balancer's certificate, from the same CA (the site's own CA in real life).
    local lb=$SUITE_RUN/lb
    install -d -m 0700 "$lb"
    issue_localhost_cert "$ca" "$lb"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$sim/signing-key.pem" 2>/dev/null
    openssl pkey -in "$sim/signing-key.pem" -pubout -outform DER | base64 -w0 >"$sim/signing-key.pub.b64"
    echo >>"$sim/signing-key.pub.b64"
}

start_sim() {
    local sim=$SUITE_RUN/sim i
    "$SIM" init --state "$sim/state" --provider "$SUITE_PROVIDER" >"$sim/refresh-token" || die "ucloud-sim init failed"
    [[ -s $sim/refresh-token ]] || die "ucloud-sim init printed no refresh token"
    SIM_LOG=$SUITE_RUN/sim-calls.log
    (cd / && exec "$SIM" serve --listen "127.0.0.1:$SIM_PORT" --cert "$sim/tls.pem" --key "$sim/tls.key" \
        --signing-key "$sim/signing-key.pem" --state "$sim/state" --log "$SIM_LOG") \
        </dev/null >"$SUITE_RUN/sim.log" 2>&1 &
    SIM_PID=$!
    for ((i = 0; i < 100; i++)); do
        kill -0 "$SIM_PID" 2>/dev/null || die "ucloud-sim exited at once: $(tail -n 5 "$SUITE_RUN/sim.log")"
        [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$SUITE_RUN/ca/ca.pem" \
            "https://127.0.0.1:$SIM_PORT/" 2>/dev/null) != 000 ]] && return 0
        sleep 0.1
    done
    die "ucloud-sim did not answer on 127.0.0.1:$SIM_PORT within 10 s"
}

# ucloud-sim call as UCloud calls the site: over TLS to the balancer (ucloud-lb.socket),
# which hands it to a gateway of ucloud-gateway-lb.socket; SIM_URL=... for the direct
# gateway socket.
sim_call() {
    "$SIM" call --url "${SIM_URL:-https://127.0.0.1:$LB_PORT}" --ca "$SUITE_RUN/ca/ca.pem" \
        --signing-key "$SUITE_RUN/sim/signing-key.pem" --state "$SUITE_RUN/sim/state" "$@"
}

# sim_expect STATUS ARGS...: the call's body on stdout when it answered STATUS.
sim_expect() {
    local expected=$1 out status
    shift
    out=$(sim_call "$@") || fail "ucloud-sim call $* failed: $out" || return 1
    status=${out%%$'\n'*}
    [[ $status == "$expected" ]] || fail "ucloud-sim call $*: HTTP $status, not $expected: ${out#*$'\n'}" || return 1
    [[ $out == *$'\n'* ]] && printf '%s\n' "${out#*$'\n'}"
    return 0
}

# --- inside the container: install and configure as a site admin ------------------------

install_package() {
    cp "$deb" "$(ct_path /root/ucloud-im.deb)" || return 1
    ct_exec dpkg -i /root/ucloud-im.deb
}

check_installed() {
    local got
    got=$(ct_exec stat -c '%a %U:%G' /usr/libexec/ucloud-im/ucloud-dispatch)
    [[ $got == "4750 root:ucloud-gw" ]] || fail "ucloud-dispatch is $got, not 4750 root:ucloud-gw" || return 1
    got=$(ct_exec stat -c '%a %U:%G %s' /var/lib/ucloud-im/transfer.key)
    [[ $got == "600 root:root "* && ${got##* } -ge 32 ]] ||
        fail "transfer.key is '$got', not root:root 0600 with a key" || return 1
    local account
    for account in ucloud-gw ucloud-svc ucloud-send ucloud-mon ucloud-lb; do
        ct_exec getent passwd "$account" >/dev/null || fail "no account $account" || return 1
    done
    ct_exec id -nG ucloud-send | grep -qw ucloud-outbox || fail "ucloud-send is not in ucloud-outbox"
}

# listen_on SOCKET PORT: a drop-in that moves a socket unit to 127.0.0.1:PORT (the
# container shares the host's network), as ucloud-gateway(8) says to.
listen_on() {
    ct_exec install -d "/etc/systemd/system/$1.d" || return 1
    printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$2" >"$(ct_path "/etc/systemd/system/$1.d/listen.conf")"
}

# site.conf is the package's conffile: the admin sets the keys it leaves commented out.
configure_site() {
    local etc=/etc/ucloud-im
    ct_exec sed -i -e "s|^#\{0,1\}provider = .*|provider = $SUITE_PROVIDER|" \
        -e "s|^#\{0,1\}public_url = .*|public_url = https://127.0.0.1:$LB_PORT|" \
        -e "s|^#\{0,1\}ucloud_url = .*|ucloud_url = https://127.0.0.1:$SIM_PORT|" \
        -e "s|^#\{0,1\}ucloud_ca = .*|ucloud_ca = $etc/ucloud-ca.pem|" "$etc/site.conf" || return 1
    install -m 0644 "$SUITE_RUN/ca/ca.pem" "$(ct_path "$etc/ucloud-ca.pem")" || return 1
    install -m 0644 "$SUITE_RUN/sim/signing-key.pub.b64" "$(ct_path "$etc/ucloud_key.pub")" || return 1
    install -m 0440 "$SUITE_RUN/sim/refresh-token" "$(ct_path "$etc/refresh-token")" || return 1
    ct_exec chown root:ucloud-send "$etc/refresh-token" || return 1
    # Both halves of the product table: the sender registers nothing while one is missing.
    ct_exec cp /usr/share/doc/ucloud-im/examples/products/files.json "$etc/products/files.json" || return 1
    ct_exec cp /usr/share/doc/ucloud-im/examples/products/jobs.json "$etc/products/jobs.json" || return 1
    # The gateway's socket on a free port (the container shares the host's network), the
    # way ucloud-gateway(8) says to move it: a drop-in.
    listen_on ucloud-gateway.socket "$GATEWAY_PORT" || return 1
    listen_on ucloud-lb.socket "$LB_PORT" || return 1
    # The balancer: its certificate and key (readable by its group), and lb.conf.
    install -m 0644 "$SUITE_RUN/lb/tls.pem" "$(ct_path "$etc/lb/tls.pem")" || return 1
    install -m 0640 "$SUITE_RUN/lb/tls.key" "$(ct_path "$etc/lb/tls.key")" || return 1
    ct_exec chown root:ucloud-lb "$etc/lb/tls.key" || return 1
    ct_exec sed -e '/^\[backend /i health_interval = 1' /usr/share/doc/ucloud-im/examples/lb.conf \
        >"$(ct_path "$etc/lb.conf")" || return 1
    grep -qx "address = unix:/run/ucloud-im/gateway-lb.sock" "$(ct_path "$etc/lb.conf")" ||
        fail "the example lb.conf does not name the balancer-facing unix socket" || return 1
    # Slurm's account (the monitor hears events from it alone); Slurm itself is not here.
    ct_exec useradd --system --user-group --no-create-home --shell /usr/sbin/nologin slurm || return 1
    # UCloud projects, with their drives under a directory the admin makes.
    ct_exec install -d -o root -g root -m 0755 "$SUITE_PROJECT_BASE" || return 1
    printf '%s\n' "project_prefix = ucp-" "project_gid_min = 200000" "project_gid_max = 200999" \
        "project_base = $SUITE_PROJECT_BASE" "slurm_default_account = ucloud" >>"$(ct_path "$etc/site.conf")" ||
        return 1
    # The people: accounts from the normal uid range, with homes.
    ct_exec useradd --create-home --user-group --shell /bin/bash "$SUITE_ALICE_LOCAL" || return 1
    ct_exec useradd --create-home --user-group --shell /bin/bash "$SUITE_BOB_LOCAL" || return 1
    if ct_exec test -x /usr/bin/ucloud-check; then
        ct_exec ucloud-check || fail "ucloud-check refuses the configuration the suite wrote" || return 1
    fi
}

enable_units() {
    ct_exec systemctl daemon-reload || return 1
    # shellcheck disable=SC2086 # a list of unit names, split into words on purpose
    ct_exec systemctl enable --now $ENABLED
}

check_enabled() {
    local unit state
    for unit in $ENABLED; do
        state=$(ct_exec systemctl is-enabled "$unit") || fail "$unit is $state, not enabled" || return 1
        state=$(ct_exec systemctl is-active "$unit") || fail "$unit is $state, not active" || return 1
    done
    # Listening where the drop-ins say, on loopback only.
    local pair
    for pair in "ucloud-gateway.socket $GATEWAY_PORT" "ucloud-lb.socket $LB_PORT"; do
        ct_exec systemctl show -P Listen "${pair% *}" | grep -qx "127.0.0.1:${pair#* } (Stream)" ||
            fail "${pair% *} listens on $(ct_exec systemctl show -P Listen "${pair% *}")" || return 1
    done
    # The balancer-facing socket: a unix socket only the balancer's group may open.
    local mode
    mode=$(ct_exec stat -c '%F %U:%G %a' /run/ucloud-im/gateway-lb.sock) || return 1
    [[ $mode == "socket root:ucloud-lb 660" ]] ||
        fail "ucloud-gateway-lb.socket made /run/ucloud-im/gateway-lb.sock $mode" || return 1
}

# --- the checks ----------------------------------------------------------------------

check_manifest() {
    local body
    body=$(sim_expect 200 GET "/ucloud/$SUITE_PROVIDER/integration/retrieveManifest") || return 1
    jq -e '.enabled == true' <<<"$body" >/dev/null || fail "the manifest does not say enabled: $body" || return 1
    # And on the direct gateway socket, without TLS or balancer.
    body=$(SIM_URL=http://127.0.0.1:$GATEWAY_PORT sim_expect 200 GET \
        "/ucloud/$SUITE_PROVIDER/integration/retrieveManifest") || return 1
    jq -e '.enabled == true' <<<"$body" >/dev/null || fail "the direct manifest does not say enabled: $body"
}

drive_of() { ct_exec ucloud-registry list | awk -v n="$1" '$1 == n { print $4 }'; }

# The admin maps Alice; the sender delivers the drive registration and approveConnection
# to the simulator and leaves UCloud's answer for the registry.
check_map_alice() {
    ct_exec ucloud-registry add "$SUITE_ALICE" "$SUITE_ALICE_LOCAL" --wait 20 || return 1
    local ALICE_DRIVE
    ALICE_DRIVE=$(drive_of "$SUITE_ALICE")
    [[ $ALICE_DRIVE =~ ^[0-9]+$ ]] || fail "Alice's drive is '$ALICE_DRIVE' after ucloud-registry add --wait 20"
}

check_sender_delivered() {
    local i
    for ((i = 0; i < 100; i++)); do
        jq -e -s --arg a "$SUITE_ALICE" '
            ([.[] | select(.path == "/auth/providers/refresh" and .status == 200)] | length > 0) and
            ([.[] | select(.path == "/api/files/collections/control/register" and .status == 200)
                | .body.items[]? | select(.createdBy == $a)] | length > 0) and
            ([.[] | select(.path == "/api/providers/integration/control/approveConnection" and .status == 200)
                | select(.body.username == $a)] | length > 0)' "$SIM_LOG" >/dev/null && return 0
        sleep 0.1
    done
    fail "the simulator did not receive a refresh, Alice's drive registration and her approveConnection:" \
        "$(jq -c '{method, path, status, error}' "$SIM_LOG")"
}

# The sender registered the site's product table with UCloud at start-up.
check_products_registered() {
    local i
    for ((i = 0; i < 100; i++)); do
        jq -e -s '[.[] | select(.method == "POST" and .path == "/api/products/v2" and .status == 200)]
            | length > 0' "$SIM_LOG" >/dev/null && return 0
        sleep 0.1
    done
    fail "the simulator received no product registration (POST /api/products/v2):" \
        "$(jq -c '{method, path, status}' "$SIM_LOG" | tail -n 20)"
}

# ucloud-du.service (what its timer starts) measures Alice's drive under its unit's
# one capability, appends its audit record, and the sender delivers the total.
check_storage_usage() {
    local drive i
    drive=$(drive_of "$SUITE_ALICE")
    ct_exec systemctl start ucloud-du.service ||
        fail "ucloud-du.service failed: $(ct_exec journalctl --no-pager -q -o cat -u ucloud-du.service | tail -n 5)" ||
        return 1
    ct_exec tail -n 1 /var/log/ucloud-im/audit.log |
        jq -e --arg d "$drive" '.program == "ucloud-du" and .capability == true
            and ([.drives[] | select(.drive == $d and .reported != false)] | length == 1)' >/dev/null ||
        fail "the audit log's last record is not ucloud-du's measure of drive $drive:" \
            "$(ct_exec tail -n 1 /var/log/ucloud-im/audit.log)" || return 1
    for ((i = 0; i < 100; i++)); do
        jq -e -s --arg a "$SUITE_ALICE" --arg scope "drive-$SUITE_PROVIDER-$drive" '
            [.[] | select(.path == "/api/accounting/v2/reportUsage" and .status == 200)
                | .body.items[]? | select(.owner.username == $a and .description.scope == $scope)]
            | length > 0' "$SIM_LOG" >/dev/null && return 0
        sleep 0.1
    done
    fail "the simulator received no storage usage of Alice's drive $drive:" \
        "$(jq -c '{method, path, status}' "$SIM_LOG" | tail -n 20)"
}

# The quota drop-in exactly as ucloud-du(8) prints it: the unit then holds CAP_SYS_ADMIN
# for the quota phase, may drop it past its system call filter (capset is in
# ~@privileged), checks the drop and walks Alice's drive. Without the drop-in's filter
# line the drop is refused and nothing is walked: shown on a copy of the unit under a
# name outside ucloud-*, so that its deliberate failure is not one of the module's.
check_storage_quota_dropin() {
    local drive dropin unit status=0 probe=du-quota-probe.service
    drive=$(drive_of "$SUITE_ALICE")
    dropin=$(sed -n '/^\[Service\]$/,/^\.fi$/p' "$STACK_REPO/man/ucloud-du.8" | sed '$d')
    grep -qx 'SystemCallFilter=capset quotactl_fd' <<<"$dropin" ||
        fail "ucloud-du(8) prints no drop-in with its SystemCallFilter= line: $dropin" || return 1
    unit=$(ct_exec systemctl show -P FragmentPath ucloud-du.service) || return 1
    cp "$(ct_path "$unit")" "$(ct_path "/etc/systemd/system/$probe")" || return 1
    mkdir -p "$(ct_path "/etc/systemd/system/$probe.d")" "$(ct_path /etc/systemd/system/ucloud-du.service.d)"
    grep -v '^SystemCallFilter=' <<<"$dropin" >"$(ct_path "/etc/systemd/system/$probe.d/quota.conf")"
    printf '%s\n' "$dropin" >"$(ct_path /etc/systemd/system/ucloud-du.service.d/quota.conf)"
    ct_exec systemctl daemon-reload || return 1
    if ct_exec systemctl start "$probe"; then
        fail "$probe ran with CAP_SYS_ADMIN it could not have dropped" || status=1
    elif ! ct_exec journalctl --no-pager -q -o cat -u "$probe" | grep -q 'refusing to walk the drives'; then
        fail "$probe failed, but not at the drop: $(ct_exec journalctl --no-pager -q -o cat -u "$probe" | tail -n 5)" ||
            status=1
    fi
    ct_exec systemctl reset-failed "$probe" || true
    if ((status == 0)); then
        ct_exec systemctl start ucloud-du.service ||
            fail "ucloud-du.service with the man page's drop-in failed: $(ct_exec journalctl --no-pager -q -o cat -u ucloud-du.service | tail -n 5)" ||
            status=1
    fi
    if ((status == 0)); then
        ct_exec tail -n 1 /var/log/ucloud-im/audit.log |
            jq -e --arg d "$drive" '.program == "ucloud-du" and .capability == true
                and .sysAdmin.heldAtStart == true and .sysAdmin.droppedBeforeWalk == true
                and ([.drives[] | select(.drive == $d and .reported == true and .source == "walk"
                    and (.walkReason | type == "string"))] | length == 1)' >/dev/null ||
            fail "the audit log's last record is not a quota-capable run that walked drive $drive:" \
                "$(ct_exec tail -n 1 /var/log/ucloud-im/audit.log)" || status=1
    fi
    rm -rf "$(ct_path "/etc/systemd/system/$probe")" "$(ct_path "/etc/systemd/system/$probe.d")" \
        "$(ct_path /etc/systemd/system/ucloud-du.service.d)"
    ct_exec systemctl daemon-reload || return 1
    return "$status"
}

browse_body() {
    jq -cn --arg drive "$1" --arg provider "$SUITE_PROVIDER" '{
        resolvedCollection: {id: $drive, specification: {title: "Home",
            product: {id: "home", category: "home", provider: $provider}}},
        browse: {flags: {path: ("/" + $drive)}, itemsPerPage: 50, next: null,
            sortBy: "PATH", sortDirection: "ascending"}}'
}

# The plugin lists Alice's home as alice: it sees a 0600 file only she may read, and
# reports her uid as its owner.
check_browse() {
    local uid body
    local ALICE_DRIVE
    ALICE_DRIVE=$(drive_of "$SUITE_ALICE")
    uid=$(ct_exec id -u "$SUITE_ALICE_LOCAL")
    ct_exec runuser -u "$SUITE_ALICE_LOCAL" -- sh -c 'umask 077 && echo private >"$HOME/only-alice.txt"'
    body=$(sim_expect 200 --user "$SUITE_ALICE" POST "/ucloud/$SUITE_PROVIDER/files/browse" \
        "$(browse_body "$ALICE_DRIVE")") || return 1
    jq -e --arg id "/$ALICE_DRIVE/only-alice.txt" --argjson uid "$uid" \
        '[.items[] | select(.id == $id and .status.unixOwner == $uid and .status.sizeInBytes == 8)] | length == 1' \
        <<<"$body" >/dev/null || fail "the listing lacks only-alice.txt owned by uid $uid: $body" || return 1
    # The dispatcher's audit line: this call ran as alice's uid.
    ct_exec tail -n 5 /var/log/ucloud-im/audit.log | jq -e -s --arg u "$SUITE_ALICE_LOCAL" --argjson uid "$uid" \
        '[.[] | select(.call == "files.browse" and .localUser == $u and .uid == $uid)] | length > 0' >/dev/null ||
        fail "no audit line for files.browse as $SUITE_ALICE_LOCAL (uid $uid): $(ct_exec tail -n 5 /var/log/ucloud-im/audit.log)"
}

CONTENT="Written through the installed package's data channel"

check_upload() {
    local body endpoint token got uid
    local ALICE_DRIVE
    ALICE_DRIVE=$(drive_of "$SUITE_ALICE")
    body=$(sim_expect 200 --user "$SUITE_ALICE" POST "/ucloud/$SUITE_PROVIDER/files/upload" \
        "$(jq -cn --arg id "/$ALICE_DRIVE/uploaded.txt" '{items: [{id: $id, type: "FILE",
            supportedProtocols: ["CHUNKED"], conflictPolicy: "REPLACE"}]}')") || return 1
    endpoint=$(jq -r '.responses[0].endpoint' <<<"$body")
    token=$(jq -r '.responses[0].token' <<<"$body")
    [[ $endpoint == "https://127.0.0.1:$LB_PORT/"* ]] || fail "the upload endpoint is $endpoint" || return 1
    got=$(curl -sS --cacert "$SUITE_RUN/ca/ca.pem" -X POST --data-binary "$CONTENT" -H "Chunked-Upload-Token: $token" \
        -H "Chunked-Upload-Offset: 0" -H "Chunked-Upload-Total-Size: ${#CONTENT}" \
        -o /dev/null -w '%{http_code}' "$endpoint") || true
    [[ $got == 2* ]] || fail "the upload answered HTTP $got" || return 1
    uid=$(ct_exec id -u "$SUITE_ALICE_LOCAL")
    got=$(ct_exec stat -c '%u %s' "/home/$SUITE_ALICE_LOCAL/uploaded.txt") ||
        fail "no uploaded.txt in alice's home" || return 1
    [[ $got == "$uid ${#CONTENT}" ]] || fail "uploaded.txt is '$got' (uid size), not '$uid ${#CONTENT}'" || return 1
    [[ $(<"$(ct_path "/home/$SUITE_ALICE_LOCAL/uploaded.txt")") == "$CONTENT" ]] ||
        fail "uploaded.txt holds something else"
}

check_download() {
    local body endpoint got
    local ALICE_DRIVE
    ALICE_DRIVE=$(drive_of "$SUITE_ALICE")
    body=$(sim_expect 200 --user "$SUITE_ALICE" POST "/ucloud/$SUITE_PROVIDER/files/download" \
        "$(jq -cn --arg id "/$ALICE_DRIVE/uploaded.txt" '{items: [{id: $id}]}')") || return 1
    endpoint=$(jq -r '.responses[0].endpoint' <<<"$body")
    [[ $endpoint == "https://127.0.0.1:$LB_PORT/"* ]] || fail "the download endpoint is $endpoint" || return 1
    got=$(curl -sS --fail --cacert "$SUITE_RUN/ca/ca.pem" "$endpoint") || fail "the download of $endpoint failed" || return 1
    [[ $got == "$CONTENT" ]] || fail "the download gave '$got'"
}

# Bob presses Connect in UCloud, opens the page, and runs ucloud-connect as bob: the
# registry socket starts ucloud-registry@.service, which learns from the kernel who asks.
check_connect() {
    local redirect ticket out i BOB_DRIVE=
    redirect=$(sim_expect 200 POST "/ucloud/$SUITE_PROVIDER/integration/connect" \
        "$(jq -cn --arg u "$SUITE_BOB" '{username: $u}')" | jq -r '.redirectTo // empty') || return 1
    [[ -n $redirect ]] || fail "integration.connect gave no redirectTo" || return 1
    ticket=$(curl -sS --cacert "$SUITE_RUN/ca/ca.pem" "$redirect" | sed -n 's|.*<pre id="ticket">\([A-Za-z0-9_-]*\)</pre>.*|\1|p')
    [[ -n $ticket ]] || fail "the connect page $redirect shows no ticket" || return 1
    # The ticket on standard input, never on a command line; --yes: no terminal here.
    out=$(printf '%s\n' "$ticket" | ct_exec runuser -u "$SUITE_BOB_LOCAL" -- ucloud-connect --yes 2>&1) ||
        fail "ucloud-connect as bob failed: $out" || return 1
    for ((i = 0; i < 100; i++)); do
        ct_exec ucloud-registry sync >/dev/null 2>&1 || true
        BOB_DRIVE=$(drive_of "$SUITE_BOB")
        [[ $BOB_DRIVE =~ ^[0-9]+$ ]] && break
        sleep 0.2
    done
    [[ $BOB_DRIVE =~ ^[0-9]+$ ]] || fail "Bob's mapping has drive '$BOB_DRIVE' after ucloud-connect: $out" || return 1
    ct_exec ucloud-registry list | grep -qx "$SUITE_BOB $SUITE_BOB_LOCAL $(ct_exec id -u "$SUITE_BOB_LOCAL") $BOB_DRIVE" ||
        fail "ucloud-registry list: $(ct_exec ucloud-registry list)" || return 1
}

# Bob may browse only his own drive: Alice's is refused.
check_refused() {
    local ALICE_DRIVE
    ALICE_DRIVE=$(drive_of "$SUITE_ALICE")
    sim_expect 404 --user "$SUITE_BOB" POST "/ucloud/$SUITE_PROVIDER/files/browse" "$(browse_body "$ALICE_DRIVE")" \
        >/dev/null
}

# A UCloud project of Alice's with an allocation here: the sender reads it from the
# core's notification stream into the inbox, ucloud-project.path starts the service,
# which makes the group and the drive (no Slurm here: its Slurm steps wait) and
# registers the drive with UCloud; ucloud-im-generator made the project base writable
# for the gateway's unit, so a folder Alice makes there through the balancer is the
# project group's, mode 2770 (umask 007 in a setgid drive).
check_project_drive() {
    local unit
    for unit in ucloud-gateway@.service ucloud-gateway-lb@.service ucloud-project.service; do
        ct_exec systemctl cat "$unit" | grep -qx "ReadWritePaths=-$SUITE_PROJECT_BASE" ||
            fail "$unit has no ReadWritePaths=-$SUITE_PROJECT_BASE from ucloud-im-generator:" \
                "$(ct_exec systemctl cat "$unit" | grep -i readwrite)" || return 1
    done
    local sim_url=https://127.0.0.1:$SIM_PORT project row i drive_id group gid got body
    project=$(curl -sS --fail-with-body --cacert "$SUITE_RUN/ca/ca.pem" -X POST "$sim_url/sim/projects" \
        --data "$(jq -cn --arg a "$SUITE_ALICE" '{title: "Suite project", members: [{username: $a, role: "PI"}]}')" |
        jq -r .id) || fail "POST /sim/projects failed" || return 1
    curl -sS --fail-with-body --cacert "$SUITE_RUN/ca/ca.pem" -X POST "$sim_url/sim/allocations" -o /dev/null \
        --data "$(jq -cn --arg p "$project" --arg pr "$SUITE_PROVIDER" \
            '{owner: {type: "project", projectId: $p}, category: {name: "cpu", provider: $pr}, quota: 1000}')" ||
        fail "POST /sim/allocations failed" || return 1
    for ((i = 0; i < 300; i++)); do
        row=$(ct_exec cat /var/lib/ucloud-im/projects/table.json 2>/dev/null |
            jq -c --arg p "$project" '.projects[$p] // empty' 2>/dev/null) || row=
        [[ -n $row ]] && jq -e '.driveId | type == "string"' <<<"$row" >/dev/null && break
        row=
        sleep 0.1
    done
    [[ -n $row ]] || fail "no registered drive for project $project in table.json within 30 s:" \
        "$(ct_exec cat /var/lib/ucloud-im/projects/table.json 2>&1)" \
        "$(ct_exec journalctl --no-pager -q -o cat -u ucloud-project.service | tail -n 5)" || return 1
    drive_id=$(jq -r .driveId <<<"$row") group=$(jq -r .group <<<"$row") gid=$(jq -r .gid <<<"$row")
    got=$(ct_exec getent group "$group") || fail "no group $group" || return 1
    [[ ${got##*:} == "$SUITE_ALICE_LOCAL" ]] || fail "group $group is '$got', not $SUITE_ALICE_LOCAL alone" || return 1
    body=$(sim_expect 200 --user "$SUITE_ALICE" POST "/ucloud/$SUITE_PROVIDER/files/folder" \
        "$(jq -cn --arg id "/$drive_id/made-by-alice" '{items: [{id: $id, conflictPolicy: "REJECT"}]}')") || return 1
    got=$(ct_exec stat -c '%U %g %a' "$SUITE_PROJECT_BASE/$group/made-by-alice") ||
        fail "no made-by-alice in the project drive $SUITE_PROJECT_BASE/$group" || return 1
    [[ $got == "$SUITE_ALICE_LOCAL $gid 2770" ]] ||
        fail "made-by-alice is '$got' (owner gid mode), not '$SUITE_ALICE_LOCAL $gid 2770'" || return 1
    # Bob is no member: the same call is refused, as for a drive that does not exist.
    sim_expect 404 --user "$SUITE_BOB" POST "/ucloud/$SUITE_PROVIDER/files/folder" \
        "$(jq -cn --arg id "/$drive_id/made-by-bob" '{items: [{id: $id, conflictPolicy: "REJECT"}]}')" >/dev/null
}

# The monitor hears Slurm's account alone; without Slurm it stays up, saying why each
# poll is skipped; stopped, its socket starts it again on the next event.
notify_as() {
    ct_exec runuser -u "$1" -- env SLURM_SCRIPT_CONTEXT=prolog_slurmctld SLURM_JOB_ID=0 \
        /usr/libexec/ucloud-im/ucloud-notify 2>&1
}

check_monitor() {
    local out uid i
    out=$(notify_as slurm) || fail "ucloud-notify as slurm failed: $out" || return 1
    [[ -z $out ]] || fail "ucloud-notify as slurm: $out" || return 1
    # ucloud-notify exits 0 whatever happens (a failed hook would fail Slurm's job),
    # and the monitor refuses before it reads a byte, so notify may see its answer or
    # a broken pipe: the monitor's journal tells.
    out=$(notify_as "$SUITE_ALICE_LOCAL") || true
    grep -q 'refused\|Broken pipe\|reset by peer' <<<"$out" ||
        fail "ucloud-notify as $SUITE_ALICE_LOCAL was not refused: $out" || return 1
    uid=$(ct_exec id -u "$SUITE_ALICE_LOCAL")
    for ((i = 0; i < 50; i++)); do
        ct_exec journalctl --no-pager -q -o cat -u ucloud-monitor.service |
            grep -q "^ucloud-monitor: event refused: uid $uid .*not Slurm's account" && break
        sleep 0.1
    done
    ((i < 50)) || fail "the monitor did not log refusing uid $uid: $out" || return 1
    # (systemctl warns that the socket can still start it: that is the point.)
    ct_exec systemctl stop ucloud-monitor.service 2>/dev/null || return 1
    ct_exec systemctl is-active --quiet ucloud-monitor.socket || fail "the socket stopped with the service" || return 1
    out=$(notify_as slurm) || fail "ucloud-notify as slurm failed: $out" || return 1
    [[ -z $out ]] || fail "ucloud-notify as slurm, to the socket alone: $out" || return 1
    ct_exec systemctl is-active --quiet ucloud-monitor.service ||
        fail "the socket did not start ucloud-monitor.service: $(ct_exec systemctl is-active ucloud-monitor.service)" ||
        return 1
    sleep 1
    ct_exec systemctl is-active --quiet ucloud-monitor.service ||
        fail "ucloud-monitor.service stopped: $(ct_exec journalctl --no-pager -q -u ucloud-monitor.service -o cat | tail -n 5)"
}

# Installing the package again (as an upgrade does) keeps the transfer key and the
# admin's site.conf, and restarts the daemons that ran, which come back up.
check_reinstall() {
    local key conf pid unit after
    key=$(ct_exec sha256sum /var/lib/ucloud-im/transfer.key) || return 1
    conf=$(ct_exec sha256sum /etc/ucloud-im/site.conf) || return 1
    pid=$(ct_exec systemctl show -P MainPID ucloud-sender.service) || return 1
    ((pid > 0)) || fail "ucloud-sender.service does not run" || return 1
    # No terminal: a conffile question would fail the install instead of waiting.
    ct_exec dpkg -i /root/ucloud-im.deb </dev/null >/dev/null || return 1
    [[ $(ct_exec sha256sum /var/lib/ucloud-im/transfer.key) == "$key" ]] ||
        fail "the transfer key changed" || return 1
    [[ $(ct_exec sha256sum /etc/ucloud-im/site.conf) == "$conf" ]] || fail "site.conf changed" || return 1
    after=$(ct_exec systemctl show -P MainPID ucloud-sender.service)
    ((after > 0 && after != pid)) || fail "ucloud-sender.service was not restarted (pid $pid, now $after)" || return 1
    for unit in ucloud-sender.service ucloud-monitor.service ucloud-lb.service; do
        ct_exec systemctl is-active --quiet "$unit" || fail "$unit is not active after the reinstall" || return 1
    done
    [[ $(ct_exec stat -c '%a %U:%G' /usr/libexec/ucloud-im/ucloud-dispatch) == "4750 root:ucloud-gw" ]] ||
        fail "the dispatcher lost its mode: $(ct_exec stat -c '%a %U:%G' /usr/libexec/ucloud-im/ucloud-dispatch)" || return 1
    # And the chain still answers.
    sim_expect 200 GET "/ucloud/$SUITE_PROVIDER/integration/retrieveManifest" >/dev/null
}

# journal_lines UNIT: what the unit's processes wrote (stdout and stderr), one JSON
# object a line: {p: PRIORITY, m: MESSAGE}.
journal_lines() {
    ct_exec journalctl --no-pager -q -o json -u "$1" |
        jq -c 'select(._TRANSPORT == "stdout") | {p: .PRIORITY, m: (.MESSAGE | if type == "array" then implode else . end)}'
}

# journal_has UNIT REGEX: the unit wrote a line matching REGEX, with a priority, and no
# line of it shows a raw <N> prefix (journald turns that into the priority).
journal_has() {
    local unit=$1 pattern=$2 lines
    lines=$(journal_lines "$unit") || return 1
    [[ -n $lines ]] || fail "no line of $unit in the journal" || return 1
    jq -e -s --arg re "$pattern" 'any(.[]; .m | test($re))' <<<"$lines" >/dev/null ||
        fail "no line of $unit matches /$pattern/: $(jq -r .m <<<"$lines" | tail -n 5)" || return 1
    jq -e -s 'all(.[]; .p | test("^[0-7]$"))' <<<"$lines" >/dev/null ||
        fail "$unit has lines without a priority: $lines" || return 1
    if jq -e -s 'any(.[]; .m | test("^<[0-7]>"))' <<<"$lines" >/dev/null; then
        fail "$unit logged a raw priority prefix: $(jq -s -c 'map(select(.m | test("^<[0-7]>")))' <<<"$lines")"
        return 1
    fi
    printf '%s: %s lines, priorities %s\n' "$unit" "$(wc -l <<<"$lines")" \
        "$(jq -r -s 'group_by(.p) | map("\(.[0].p) x\(length)") | join(", ")' <<<"$lines")"
}

# Each service's own lines are in the journal under its unit, with a priority.
check_journal() {
    journal_has 'ucloud-gateway@*' \
        "^ucloud-gateway: GET /ucloud/$SUITE_PROVIDER/integration/retrieveManifest integration.retrieveManifest 200 " || return 1
    journal_has 'ucloud-gateway-lb@*' "^ucloud-gateway: POST /ucloud/$SUITE_PROVIDER/files/browse files.browse 404 " \
        >/dev/null || return 1
    journal_has 'ucloud-gateway-lb@*' \
        "^ucloud-gateway: POST /ucloud/$SUITE_PROVIDER/files/browse files.browse 200 [0-9.]+ms client=127.0.0.1:" || return 1
    journal_has ucloud-lb.service '^ucloud-lb: serving with 1 backend' || return 1
    journal_has ucloud-sender.service "^ucloud-sender: delivering to https://127.0.0.1:$SIM_PORT while holding the sender lease " || return 1
    journal_has ucloud-monitor.service '^ucloud-monitor: polling every' || return 1
    journal_has ucloud-monitor.service '^ucloud-monitor: poll skipped' >/dev/null || return 1
    # The registry says nothing when all goes well: its instances are in the journal
    # through systemd's own lines about them.
    [[ $(ct_exec journalctl --no-pager -q -o cat -u 'ucloud-registry@*' | grep -c '^Started ') -ge 1 ]] ||
        fail "no ucloud-registry@ instance in the journal"
}

# Every ucloud-* unit loaded, and every one the package ships: none failed.
check_none_failed() {
    local units unit failed=()
    mapfile -t units < <({
        ct_exec systemctl list-units --all --plain --no-legend 'ucloud-*' | awk '{ print $1 }'
        ct_exec systemctl list-unit-files --no-legend 'ucloud-*' | awk '$1 !~ /@\./ { print $1 }'
    } | sort -u)
    ((${#units[@]} >= 8)) || fail "only ${#units[@]} ucloud-* units: ${units[*]}" || return 1
    for unit in "${units[@]}"; do
        ct_exec systemctl is-failed --quiet "$unit" && failed+=("$unit")
    done
    ((${#failed[@]} == 0)) || fail "failed: ${failed[*]}" || return 1
    # One instance per connection is collected as soon as it ends, failed or not
    # (CollectMode=inactive-or-failed): the journal keeps what systemd said of each.
    local said
    said=$(ct_exec journalctl --no-pager -q -o cat -u 'ucloud-*' | grep -E 'Failed with result|Main process exited, code=(exited|killed|dumped), status=[^0]' || true)
    [[ -z $said ]] || fail "systemd logged failures: $said" || return 1
    printf '%s units, none failed; no instance failed\n' "${#units[@]}"
}

# stop_tcp_socket UNIT PORT [SERVICE]: after `systemctl stop UNIT` nothing listens on
# the port, a new connection is refused, and SERVICE (which Requires= the socket) is
# stopped too.
stop_tcp_socket() {
    ct_exec systemctl stop "$1" || return 1
    local code
    if code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$2/ucloud-im/health" 2>&1); then
        fail "HTTP $code on 127.0.0.1:$2 after the stop"
        return 1
    fi
    grep -q 'Connection refused\|Couldn.t connect' <<<"$code" || fail "not refused: $code" || return 1
    port_free "$2" || fail "127.0.0.1:$2 still listens" || return 1
    if [[ -n ${3:-} ]] && ct_exec systemctl is-active --quiet "$3"; then
        fail "$3 still runs without its socket"
        return 1
    fi
}

# Any client of a unix socket will do to see it refused: ucloud-connect is installed.
stop_gateway_lb_socket() {
    ct_exec systemctl stop ucloud-gateway-lb.socket || return 1
    local out
    # ucloud-connect as a plain unix-socket client: it connects before it says anything.
    if out=$(ct_exec ucloud-connect --yes --socket /run/ucloud-im/gateway-lb.sock <<<AAAAAAAAAAAAAAAAAAAAAAAA 2>&1); then
        fail "a connection to the stopped balancer-facing socket succeeded: $out"
        return 1
    fi
    grep -qiE 'refused|no such file' <<<"$out" || fail "not refused: $out"
}

check_stop_registry_socket() {
    ct_exec systemctl stop ucloud-registry.socket || return 1
    local out
    if out=$(ct_exec runuser -u "$SUITE_BOB_LOCAL" -- ucloud-connect --yes <<<AAAAAAAAAAAAAAAAAAAAAAAA 2>&1); then
        fail "ucloud-connect succeeded with the socket stopped: $out"
        return 1
    fi
    grep -qiE 'refused|no such file' <<<"$out" || fail "ucloud-connect failed otherwise: $out"
}

check_stop_monitor_socket() {
    ct_exec systemctl stop ucloud-monitor.socket || return 1
    if ct_exec systemctl is-active --quiet ucloud-monitor.service; then
        fail "the monitor still runs"
        return 1
    fi
    local out
    out=$(notify_as slurm) || true
    grep -q 'not delivered.*Connection refused' <<<"$out" || fail "ucloud-notify was not refused: $out" || return 1
    if ct_exec systemctl is-active --quiet ucloud-monitor.service; then
        fail "the monitor was started again"
        return 1
    fi
}

# `systemd-analyze security` as the container's systemd rates each unit, held to the
# bounds the units' comments state: the gateway's (which must leave out everything that
# implies NoNewPrivileges, for the setuid dispatcher) at 6.5, every other at 2.0.
security_scores() {
    local unit score bound over=()
    : >"$SUITE_RUN/security.txt"
    for unit in "${SUITE_SERVICES[@]}"; do
        score=$(ct_exec systemd-analyze security --no-pager "$unit" 2>&1 |
            sed -n 's/^→ Overall exposure level for [^:]*: //p')
        [[ $score =~ ^[0-9]+\.[0-9] ]] || fail "no score for $unit: $score" || return 1
        printf '%-32s %s\n' "$unit" "$score" | tee -a "$SUITE_RUN/security.txt"
        bound=2.0
        [[ $unit == ucloud-gateway* ]] && bound=6.5
        # Root with five file capabilities, /etc writable (groupadd), the network (sacctmgr).
        [[ $unit == ucloud-project.service ]] && bound=3.0
        if awk -v s="${score%% *}" -v b="$bound" 'BEGIN { exit !(s > b) }'; then
            over+=("$unit ${score%% *} > $bound")
        fi
    done
    ((${#over[@]} == 0)) || fail "over the bound: ${over[*]}"
}

# dpkg --remove stops what runs and keeps the configuration, the mappings, the transfer
# key and the logs.
check_remove() {
    ct_exec dpkg --remove ucloud-im || return 1
    local unit path
    for unit in ucloud-sender.service ucloud-registry-expire.timer ucloud-monitor.service ucloud-lb.service; do
        if ct_exec systemctl is-active --quiet "$unit"; then
            fail "$unit still runs after dpkg --remove"
            return 1
        fi
    done
    for path in /etc/ucloud-im/site.conf /etc/ucloud-im/refresh-token /var/lib/ucloud-im/transfer.key \
        /var/log/ucloud-im/audit.log; do
        ct_exec test -s "$path" || fail "dpkg --remove did not keep $path" || return 1
    done
    [[ -n $(ct_exec find /var/lib/ucloud-im/mappings -type f) ]] || fail "dpkg --remove dropped the mappings" || return 1
    if ct_exec test -e /usr/bin/ucloud-gateway -o -e /usr/libexec/ucloud-im/ucloud-dispatch; then
        fail "the programs are still there"
        return 1
    fi
}

# dpkg --purge removes the state, the configuration, the statoverride and the enable links.
check_purge() {
    ct_exec dpkg --purge ucloud-im || return 1
    local path left
    for path in /etc/ucloud-im /var/lib/ucloud-im /var/log/ucloud-im; do
        if ct_exec test -e "$path"; then
            fail "dpkg --purge left $path"
            return 1
        fi
    done
    if ct_exec dpkg-statoverride --list /usr/libexec/ucloud-im/ucloud-dispatch; then
        fail "dpkg --purge left the statoverride"
        return 1
    fi
    left=$(ct_exec find /etc/systemd/system -name 'ucloud-*' -not -name '*.d' -not -path '*.d/*')
    [[ -z $left ]] || fail "dpkg --purge left $left"
}

check_no_failed_unit() {
    local out
    out=$(ct_exec systemctl --failed --no-legend --plain) || return 1
    [[ -z $out ]] || fail "failed units: $out"
}

run_suite() {
    rm -rf "$SUITE_RUN"
    install -d -m 0700 "$SUITE_RUN"
    host_tools
    trap suite_cleanup EXIT
    trap 'exit 130' INT TERM
    local t=$SECONDS
    build_package
    say "package and simulator built in $((SECONDS - t)) s"
    local depends
    mapfile -t depends < <(package_depends)
    ct_root "${depends[@]}"
    make_keys
    SIM_PORT=$(pick_port)
    GATEWAY_PORT=$(pick_port "$SIM_PORT")
    LB_PORT=$(pick_port "$SIM_PORT" "$GATEWAY_PORT")
    start_sim
    t=$SECONDS
    ct_sweep ucloud-im-test-
    ct_boot "ucloud-im-test-$$" "$SUITE_RUN/nspawn.log"
    say "container up in $((SECONDS - t)) s (PID 1 is $CT_PID on the host); simulator on 127.0.0.1:$SIM_PORT," \
        "balancer on 127.0.0.1:$LB_PORT, gateway sockets on 127.0.0.1:$GATEWAY_PORT (direct), /run/ucloud-im/gateway-lb.sock (balancer's)"

    check "dpkg -i installs the package" install_package
    check "the package made the accounts, the transfer key and the 4750 root:ucloud-gw dispatcher" check_installed
    check "the admin configures the site" configure_site
    check "systemctl enable --now the units the README names, and the direct gateway socket" enable_units
    check "the units are enabled and active, the gateway socket on loopback" check_enabled
    check "the manifest through the balancer and through the direct gateway socket" check_manifest
    check "ucloud-registry add maps Alice and records her drive" check_map_alice
    check "the sender delivered to the simulator" check_sender_delivered
    check "the sender registered the site's products" check_products_registered
    check "a browse as Alice runs as alice" check_browse
    check "an upload lands in alice's home, owned by her" check_upload
    check "a download gives the file back" check_download
    check "ucloud-du.service measures Alice's drive, audits it, and her storage usage reaches UCloud" \
        check_storage_usage
    check "ucloud-du.service with the quota drop-in of ucloud-du(8) holds CAP_SYS_ADMIN, drops it past its filter and walks" \
        check_storage_quota_dropin
    check "Bob connects through the registry socket (ucloud-connect)" check_connect
    check "Bob may not browse Alice's drive" check_refused
    check "a UCloud project becomes a group and a registered project drive the gateway's unit may write" \
        check_project_drive
    check "the monitor hears Slurm's account alone, stays up without Slurm, and is started by its socket" \
        check_monitor
    check "ucloud-registry-expire.service runs (what its timer starts)" \
        ct_exec systemctl start ucloud-registry-expire.service
    check "the journal holds each service's lines with their priority" check_journal
    check "dpkg -i again (an upgrade) keeps the key and site.conf and restarts the daemons" check_reinstall
    check "no ucloud-* unit failed" check_none_failed
    check "systemctl stop ucloud-gateway.socket refuses new connections" \
        stop_tcp_socket ucloud-gateway.socket "$GATEWAY_PORT"
    check "systemctl stop ucloud-lb.socket stops the balancer and refuses new connections" \
        stop_tcp_socket ucloud-lb.socket "$LB_PORT" ucloud-lb.service
    check "systemctl stop ucloud-gateway-lb.socket refuses new connections" stop_gateway_lb_socket
    check "systemctl stop ucloud-registry.socket refuses new connections" check_stop_registry_socket
    check "systemctl stop ucloud-monitor.socket stops the monitor and refuses events" check_stop_monitor_socket
    check "no ucloud-* unit failed after the stops" check_none_failed
    check "systemd-analyze security rates every unit" security_scores
    check "dpkg --remove stops the services and keeps state and configuration" check_remove
    check "dpkg --purge removes state, configuration, statoverride and enable links" check_purge
    check "no unit at all failed" check_no_failed_unit
    check "the container's systemd is still running" bash -c '[[ $1 == running ]] || { echo "$1"; exit 1; }' _ \
        "$(ct_exec systemctl is-system-running 2>&1)"
    say "checks ran in $((SECONDS - t)) s"

    local halt=$SECONDS
    ct_shutdown
    say "the container halted in $((SECONDS - halt)) s"
    ((failures == 0)) || die "$failures check(s) failed; logs in $SUITE_RUN"
}

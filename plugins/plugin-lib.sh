# shellcheck shell=sh
# Helpers for ucloud-im shell plugins. Source it first thing:
#
#     . "$UCLOUD_IM_LIBEXEC/plugin-lib.sh"
#
# POSIX sh; needs jq (or gojq, preferred when installed: it starts ~15x faster). See ucloud-im-plugins(7).

# The jq every plugin runs: Debian 12's jq 1.6 spends 20-30 ms starting up (more
# than the Slurm call it prepares), gojq, which speaks the same language, ~2 ms. Any
# jq works; gojq is used when the site has it.
if command -v gojq >/dev/null 2>&1; then ucloud_jq=gojq; else ucloud_jq=jq; fi

# The dispatcher runs a plugin as `<call> /dev/fd/3`: the request JSON is the file named
# by the first argument. Captured here, while $1 is still the script's own.
ucloud_request_file=${1:-/dev/fd/3}

# The site's configuration directory: product tables, site.conf.
ucloud_etc=${UCLOUD_IM_ETC:-${UCLOUD_IM_LIBEXEC:-/usr/libexec/ucloud-im}/../../../etc/ucloud-im}

# ucloud_fail STATUS CODE WHY: ends the call with UCloud's error body. The gateway
# reads the last line of stderr as the failure, so nothing may be written after it.
ucloud_fail() {
    case $1 in
    [1-5][0-9][0-9]) ;;
    *)
        printf '%s\n' "ucloud_fail: status must be a 3-digit HTTP status, got '$1'" >&2
        exit 1
        ;;
    esac
    "$ucloud_jq" -cn --argjson status "$1" --arg code "$2" --arg why "$3" \
        '{status: $status, errorCode: $code, why: $why}' >&2
    exit 1
}

# ucloud_request: prints the request JSON.
ucloud_request() {
    cat -- "$ucloud_request_file" || ucloud_fail 500 PLUGIN_FAILED "cannot read the request file $ucloud_request_file"
}

# ucloud_config FILE: prints a JSON file of the site's configuration directory, after
# checking it parses, or fails the call with a message an admin can act on.
ucloud_config() {
    "$ucloud_jq" -e . "$ucloud_etc/$1" 2>/dev/null ||
        ucloud_fail 500 SITE_CONFIG "$ucloud_etc/$1 is missing or not valid JSON"
}

# ucloud_site_setting KEY: prints the value of KEY in site.conf (empty when unset).
ucloud_site_setting() {
    awk -v key="$1" '
        /^[ \t]*#/ { next }
        {
            eq = index($0, "=")
            if (eq == 0) next
            k = substr($0, 1, eq - 1); v = substr($0, eq + 1)
            gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
            if (k == key) value = v
        }
        END { print value }
    ' "$ucloud_etc/site.conf"
}

# --- Slurm jobs (the jobs.* plugins) -----------------------------------------------

# The fixed tag every job submitted through UCloud carries (sbatch --comment).
# shellcheck disable=SC2034 # used by the plugins that source this file
ucloud_jobs_tag=ucloud-im

# ucloud_jobs_check_id ID: fails the call unless ID can be a UCloud job id. It becomes
# a Slurm job name and a directory name, so it is held to letters, digits, `_.-`.
ucloud_jobs_check_id() {
    case $1 in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*)
        ucloud_fail 400 BAD_JOB_ID "job id '$1' is not a UCloud job id (letters, digits, '_', '.', '-'; starting with a letter or digit)"
        ;;
    esac
    [ "${#1}" -le 64 ] || ucloud_fail 400 BAD_JOB_ID "job id '$1' is longer than 64 characters"
}

# ucloud_slurm_why TEXT: Slurm's error message without the tool's prefix, one line.
ucloud_slurm_why() {
    printf '%s\n' "$1" | sed -e 's/^[a-z]*: error: //' -e 's/^Batch job submission failed: //' |
        grep -v '^[[:space:]]*$' | tail -n 1
}

# ucloud_jobs_of ID: prints `slurmId state` for each job of the calling user named ID
# that Slurm still knows (finished jobs stay known for MinJobAge). Only the user's own
# jobs are looked at: a name is never enough to reach someone else's job.
ucloud_jobs_of() {
    _ucloud_out=$(squeue -h -t all -u "$USER" -n "$1" -o '%i %T' 2>&1) ||
        ucloud_fail 500 SLURM_UNAVAILABLE "squeue failed: $(ucloud_slurm_why "$_ucloud_out")"
    printf '%s\n' "$_ucloud_out" | grep -E '^[0-9]+ [A-Z_]+$' || true
}

# ucloud_jobs_active ID: prints the Slurm ids of the caller's jobs named ID that have
# not finished (pending, running, suspended, ...).
ucloud_jobs_active() {
    ucloud_jobs_of "$1" | awk '$2 !~ /^(COMPLETED|CANCELLED|FAILED|TIMEOUT|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE|OUT_OF_MEMORY|SPECIAL_EXIT|REVOKED)$/ { print $1 }'
}

# ucloud_jobs_items: the bulk request's items as shell lines `item 'id' 'slurmId'`
# (slurmId from providerGeneratedId, empty when UCloud sent none), for `eval`. The
# items are either Jobs or {job: Job, ...} (extend, suspend): both are accepted.
# Every value is quoted by jq's @sh, so eval only ever runs `item`.
ucloud_jobs_items() {
    # shellcheck disable=SC2016 # a jq program
    ucloud_request | "$ucloud_jq" -r '
        if (.items | type) != "array" then error("the request has no items list") else . end
        | .items[] | (if has("job") then .job else . end) as $job
        | ($job.id // "" | tostring) as $id
        | ($job.providerGeneratedId // "" | tostring | split("/") | last // "") as $slurm
        | "item \($id | @sh) \($slurm | @sh)"
        + (if has("requestedTime") then " \(.requestedTime | (((.hours // 0) * 60 + (.minutes // 0)) * 60 + (.seconds // 0)) | tostring | @sh)" else "" end)
    ' || ucloud_fail 400 BAD_REQUEST "expected {\"items\":[Job,...]}"
}

# ucloud_jobs_control VERB: runs `scontrol VERB <slurmId>` on the caller's unfinished
# jobs named by the request's items ({job: Job}), after finding every one of them;
# prints the bulk answer. A refusal by Slurm becomes a 400 with Slurm's reason.
ucloud_jobs_control() {
    _ucloud_items=$(ucloud_jobs_items) || exit 1
    _ucloud_targets=''
    _ucloud_count=0
    # shellcheck disable=SC2317 # called by the eval below
    item() {
        ucloud_jobs_check_id "$1"
        _ucloud_active=$(ucloud_jobs_active "$1")
        [ -n "$_ucloud_active" ] ||
            ucloud_fail 404 NOT_FOUND "you have no pending or running Slurm job named $1"
        _ucloud_targets="$_ucloud_targets $(printf '%s' "$_ucloud_active" | tr '\n' ' ')"
        _ucloud_count=$((_ucloud_count + 1))
    }
    eval "$_ucloud_items"
    for _ucloud_id in $_ucloud_targets; do
        _ucloud_out=$(scontrol "$1" "$_ucloud_id" 2>&1) ||
            ucloud_fail 400 SLURM_REFUSED "Slurm refused to $1 job $_ucloud_id: $(ucloud_slurm_why "$_ucloud_out") (Slurm allows $1 to operators and admins only, unless the site grants it)"
    done
    # shellcheck disable=SC2016 # a jq program
    "$ucloud_jq" -cn --argjson n "$_ucloud_count" '{responses: [range($n) | {}]}'
}


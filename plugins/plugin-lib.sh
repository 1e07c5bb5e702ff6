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

# ucloud_jobs_project PROJECT: decides how the jobs of a UCloud Job owned by PROJECT
# (owner.project; empty for a personal job) are found, from ucloud-project's table
# ($UCLOUD_IM_PROJECTS/table.json, root's). Sets
#   ucloud_jobs_accounts  the project's Slurm accounts, comma-separated, when the
#                         caller is a member: its jobs are looked up in them, so a
#                         member reaches a job another member started (Slurm then
#                         decides whether the caller may act on it);
#                         empty otherwise: only the caller's own jobs (-u $USER);
#   ucloud_jobs_drive     the project's drive, when it has one.
# A caller the table does not list as a member is refused here, before Slurm is
# asked, whatever the request says. A personal job, a site without a table and a
# project the table does not know leave the caller's own jobs.
ucloud_jobs_project() {
    # A bulk request's items are mostly of one project: it is looked up once.
    if [ -n "${_ucloud_project_known:-}" ] && [ "$_ucloud_project_seen" = "$1" ]; then
        return 0
    fi
    _ucloud_project_known=1
    _ucloud_project_seen=$1
    ucloud_jobs_accounts=''
    # shellcheck disable=SC2034 # used by the plugins that source this file
    ucloud_jobs_drive=''
    _ucloud_table=${UCLOUD_IM_PROJECTS:-}/table.json
    if [ -z "$1" ] || [ -z "${UCLOUD_IM_PROJECTS:-}" ] || [ ! -e "$_ucloud_table" ]; then
        return 0
    fi
    # Every name is checked before it reaches a command line: accounts are plain
    # Slurm names (never an option: no leading -), the drive a plain absolute path
    # without . or .. components.
    # shellcheck disable=SC2016 # a jq program
    _ucloud_entry=$("$ucloud_jq" -r --arg p "$1" --arg me "$USER" '
        def plain: type == "string" and test("^[A-Za-z0-9][A-Za-z0-9_.-]*$");
        (.projects // {}) as $ps
        | if ($ps | type) != "object" then error("projects is not an object") else . end
        | ($ps[$p] // null) as $e
        | if $e == null then "absent"
          elif ($e | type) != "object" then error("the project is not an object")
          elif ($e.members // [] | type) != "array" then error("its members are not a list")
          elif ($e.members // [] | any(. == $me)) | not then "outsider"
          else
            ($e.accounts // {}) as $a
            | if ($a | type) != "object" then error("its accounts are not an object")
              elif ([$a[]] | all(plain) | not) then error("an account of it is not a plain Slurm name")
              else . end
            | ($e.drive // "") as $d
            | if $d != "" and (($d | type) != "string" or ($d | test("^/[A-Za-z0-9/._+-]*$") | not)
                  or ($d | split("/") | any(. == "." or . == ".."))) then
                error("its drive is not a plain absolute path")
              else . end
            | "member \([$a[]] | unique | join(",") | @sh) \($d | @sh)"
          end
    ' "$_ucloud_table" 2>&1) ||
        ucloud_fail 500 SITE_CONFIG "the projects table $_ucloud_table, project $1: $(printf '%s' "$_ucloud_entry" | tail -n 1)"
    case $_ucloud_entry in
    absent) ;;
    outsider)
        ucloud_fail 403 NOT_A_MEMBER "your account $USER is not a member of project $1 on this site: only its members act on its jobs"
        ;;
    member\ *)
        # shellcheck disable=SC2317 # called by the eval below
        member() {
            ucloud_jobs_accounts=$1
            # shellcheck disable=SC2034 # used by the plugins that source this file
            ucloud_jobs_drive=$2
        }
        eval "$_ucloud_entry"
        ;;
    *) ucloud_fail 500 PLUGIN_FAILED "cannot read the projects table's answer for project $1" ;;
    esac
}

# ucloud_jobs_of ID [ACCOUNTS]: prints `slurmId state` for each job named ID that Slurm
# still knows (finished jobs stay known for MinJobAge): the calling user's own jobs,
# or with ACCOUNTS (ucloud_jobs_accounts: a project the caller is a member of) the
# jobs of those accounts, whoever submitted them. A name is never enough to reach
# a job: it takes the caller or the caller's project as well.
ucloud_jobs_of() {
    if [ -n "${2:-}" ]; then
        _ucloud_out=$(squeue -h -t all -A "$2" -n "$1" -o '%i %T' 2>&1)
    else
        _ucloud_out=$(squeue -h -t all -u "$USER" -n "$1" -o '%i %T' 2>&1)
    fi || ucloud_fail 500 SLURM_UNAVAILABLE "squeue failed: $(ucloud_slurm_why "$_ucloud_out")"
    printf '%s\n' "$_ucloud_out" | grep -E '^[0-9]+ [A-Z_]+$' || true
}

# ucloud_jobs_active ID [ACCOUNTS]: prints the Slurm ids of the jobs named ID (as
# ucloud_jobs_of finds them) that have not finished (pending, running, suspended, ...).
ucloud_jobs_active() {
    ucloud_jobs_of "$1" "${2:-}" | awk '$2 !~ /^(COMPLETED|CANCELLED|FAILED|TIMEOUT|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE|OUT_OF_MEMORY|SPECIAL_EXIT|REVOKED)$/ { print $1 }'
}

# Why Slurm may refuse a member acting on a project job.
# shellcheck disable=SC2034 # used by the plugins that source this file
ucloud_jobs_project_rule="Slurm lets only the job's owner and the project's PI and admins (Slurm coordinators of its account) act on it"

# ucloud_jobs_items: the bulk request's items as shell lines
#   item 'id' 'slurmId' 'project' ['seconds']
# (slurmId from providerGeneratedId, empty when UCloud sent none; project from
# owner.project, empty for a personal job; seconds from requestedTime, for extend),
# for `eval`. The items are either Jobs or {job: Job, ...} (extend, suspend): both
# are accepted. Every value is quoted by jq's @sh, so eval only ever runs `item`.
ucloud_jobs_items() {
    # shellcheck disable=SC2016 # a jq program
    ucloud_request | "$ucloud_jq" -r '
        if (.items | type) != "array" then error("the request has no items list") else . end
        | .items[] | (if has("job") then .job else . end) as $job
        | ($job.id // "" | tostring) as $id
        | ($job.providerGeneratedId // "" | tostring | split("/") | last // "") as $slurm
        | ($job.owner.project // ""
           | if type == "string" then . else error("owner.project is not text") end) as $project
        | "item \($id | @sh) \($slurm | @sh) \($project | @sh)"
        + (if has("requestedTime") then " \(.requestedTime | (((.hours // 0) * 60 + (.minutes // 0)) * 60 + (.seconds // 0)) | tostring | @sh)" else "" end)
    ' || ucloud_fail 400 BAD_REQUEST "expected {\"items\":[Job,...]}"
}

# ucloud_jobs_control VERB: runs `scontrol VERB <slurmId>` on the unfinished jobs
# named by the request's items ({job: Job}) (the caller's own, or their project's:
# ucloud_jobs_project), after finding every one of them; prints the bulk answer. A
# refusal by Slurm becomes a 400 with Slurm's reason, a 403 for a project's job.
ucloud_jobs_control() {
    _ucloud_items=$(ucloud_jobs_items) || exit 1
    _ucloud_targets=''
    _ucloud_count=0
    _ucloud_status=400
    _ucloud_rule="Slurm allows $1 to operators and admins only, unless the site grants it"
    # shellcheck disable=SC2317 # called by the eval below
    item() {
        ucloud_jobs_check_id "$1"
        ucloud_jobs_project "$3"
        _ucloud_active=$(ucloud_jobs_active "$1" "$ucloud_jobs_accounts")
        [ -n "$_ucloud_active" ] ||
            ucloud_fail 404 NOT_FOUND "there is no pending or running Slurm job named $1 of yours${3:+ or of project $3}"
        if [ -n "$ucloud_jobs_accounts" ]; then
            _ucloud_status=403
            _ucloud_rule="$_ucloud_rule; $ucloud_jobs_project_rule"
        fi
        _ucloud_targets="$_ucloud_targets $(printf '%s' "$_ucloud_active" | tr '\n' ' ')"
        _ucloud_count=$((_ucloud_count + 1))
    }
    eval "$_ucloud_items"
    for _ucloud_id in $_ucloud_targets; do
        _ucloud_out=$(scontrol "$1" "$_ucloud_id" 2>&1) ||
            ucloud_fail "$_ucloud_status" SLURM_REFUSED "Slurm refused to $1 job $_ucloud_id: $(ucloud_slurm_why "$_ucloud_out") ($_ucloud_rule)"
    done
    # shellcheck disable=SC2016 # a jq program
    "$ucloud_jq" -cn --argjson n "$_ucloud_count" '{responses: [range($n) | {}]}'
}

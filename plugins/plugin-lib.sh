# Helpers for ucloud-im shell plugins. Source it first thing:
#
#     . "$UCLOUD_IM_LIBEXEC/plugin-lib.sh"
#
# POSIX sh; needs jq. See ucloud-im-plugins(7).

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
    jq -cn --argjson status "$1" --arg code "$2" --arg why "$3" \
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
    jq -e . "$ucloud_etc/$1" 2>/dev/null ||
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

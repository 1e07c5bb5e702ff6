# shellcheck shell=bash
# A Job as UCloud's core sends it, for the benchmarks that need a running job of a
# test user. Source after target/stack/stack.env.
#
# stack_job ID OWNER MINUTES WEB_PORT WORD...: the Job JSON running the words as its
# invocation, with the stack's product and application; WEB_PORT (0 for none) is
# the port its application names for a web interface.
stack_job() {
    local id=$1 owner=$2 minutes=$3 port=$4
    shift 4
    local product=$UCLOUD_IM_JOB_PRODUCT category app version words
    category=$(jq -r --arg id "$product" '.products[] | select(.id == $id) | .category' \
        "$UCLOUD_IM_ETC/products/jobs.json")
    app=${UCLOUD_IM_JOB_APP%:*} version=${UCLOUD_IM_JOB_APP##*:}
    words=$(printf '%s\n' "$@" | jq -R '{type: "word", word: .}' | jq -sc .)
    jq -cn --arg id "$id" --arg owner "$owner" --arg product "$product" --arg category "$category" \
        --arg provider "$UCLOUD_IM_PROVIDER" --arg app "$app" --arg version "$version" \
        --argjson minutes "$minutes" --argjson port "$port" --argjson words "$words" '{
        id: $id, createdAt: 0, owner: {createdBy: $owner, project: null}, updates: [],
        specification: {product: {id: $product, category: $category, provider: $provider},
            application: {name: $app, version: $version}, name: "bench", replicas: 1,
            parameters: {}, resources: [], timeAllocation: {hours: 0, minutes: $minutes, seconds: 0}},
        status: {state: "IN_QUEUE",
            resolvedApplication: {metadata: {name: $app, version: $version},
                invocation: ({parameters: [], invocation: $words}
                    + (if $port > 0 then {web: {enabled: true, port: $port}} else {} end))},
            resolvedProduct: {name: $product, category: $category, cpu: 1, memoryInGigs: 1, gpu: 0}}}'
}

# stack_job_start JOB_JSON SIM_OPTS...: creates the job through the balancer as UCloud
# does and waits until Slurm runs it; prints its Slurm id.
stack_job_start() {
    local job=$1 created slurm
    shift
    created=$("$UCLOUD_IM_BIN/ucloud-sim" call "$@" POST "/ucloud/$UCLOUD_IM_PROVIDER/jobs" "{\"items\":[$job]}")
    [ "${created%%$'\n'*}" = 200 ] || { echo "jobs.create failed: $created" >&2; return 1; }
    slurm=$(sed -n 2p <<<"$created" | jq -r '.responses[0].id | split("/") | last')
    for _ in $(seq 120); do
        [ "$(squeue -h -j "$slurm" -o %T)" = RUNNING ] && break
        sleep 0.5
    done
    printf '%s\n' "$slurm"
}

# shellcheck shell=bash
# scripts/bench.sh, cluster: The cluster rows: members and a client, peer hits, replication, rolling restart, flights.
# Sourced by scripts/bench.sh; uses its settings and globals.
MEMBER_URLS=()   # traffic URL of each cluster member
MEMBER_ADMINS=() # admin URL of each cluster member
MEMBER_PIDS=()
MEMBER_GRPC=()   # gRPC port of each cluster member (its identity)
CLUSTER_MEMBERS="" # the members' gRPC addresses, as YAML list items
PEER_RUN="$RUN_ID-peer" # cycle.lua's tag: names the answers stored in the cluster
declare -A CLUSTER_NOTE # per cluster row: what the cluster counted, for Checks

# start_ha NAME EMBEDDED MAX_COST GRPC_PORT: a relaycache in mode ha with
# CLUSTER_MEMBERS as its member list (see relaycache-ha.yaml.template).
start_ha() {
    local name=$1 port admin_port config="$WORK/$1.yaml" member_token=""
    free_port port
    free_port admin_port
    [[ $2 == true ]] && member_token=bench-members-token
    render "$BENCH_DIR/relaycache-ha.yaml.template" "$config" \
        "PORT=$port" "ADMIN_PORT=$admin_port" "MOCK_PORT=$MOCK_PORT" "EMBEDDED=$2" \
        "MAX_COST=$3" "GRPC_PORT=$4" "MEMBERS=$CLUSTER_MEMBERS" "MEMBER_TOKEN=$member_token"
    launch_relaycache "$name" "$config" "$port" "$admin_port"
}

# wait_members NAME ADMIN N: until that process sees N live members.
wait_members() {
    local name=$1 admin=$2 n=$3 json members=0 _
    for _ in {1..150}; do # 0.1 s apart: 15 s
        json=$(curl -fsS --max-time 2 "$admin/stats") || die "GET $admin/stats failed"
        members=$(cluster_stat "$json" members)
        ((members == n)) && return 0
        sleep 0.1
    done
    die "$name sees $members live cluster members, not $n, after 15 s (log: $LOG_DIR/$name.log)"
}

# Three members on loopback, each listing all three.
start_cluster() {
    local i grpc ports=()
    for i in 1 2 3; do
        free_port grpc
        ports+=("$grpc")
        MEMBER_GRPC+=("$grpc")
        CLUSTER_MEMBERS+="${CLUSTER_MEMBERS:+, }\"127.0.0.1:$grpc\""
    done
    for i in 0 1 2; do
        start_ha "relaycache-member-$((i + 1))" true 1073741824 "${ports[i]}"
        MEMBER_URLS+=("$RELAY_URL")
        MEMBER_ADMINS+=("$RELAY_ADMIN")
        MEMBER_PIDS+=("$RELAY_PID")
    done
    for i in 0 1 2; do
        wait_members "relaycache-member-$((i + 1))" "${MEMBER_ADMINS[i]}" 3
    done
    log "cluster: 3 members formed"
}

# wait_replicated: until member 1 (RELAY_ADMIN) finished a cluster write for
# every miss it counted (writes run after the answer is sent); prints that
# member's /stats.
wait_replicated() {
    local json writes misses _
    for _ in {1..100}; do # 0.1 s apart: 10 s
        json=$(relay_stats)
        writes=$(cluster_stat "$json" writes)
        misses=$(json_number "$json" misses)
        if ((writes >= misses)); then
            echo "$json"
            return 0
        fi
        sleep 0.1
    done
    die "member 1 finished $writes cluster writes for $misses misses after 10 s"
}

# fill_cluster: stores cycle.lua's PEER_KEYS answers through member 1, in
# short runs until member 1 has counted a miss for each (a run that gets
# past the set starts it again: hits), then waits for their replication.
fill_cluster() {
    local json held0 held=0 failures _
    RELAY_ADMIN=${MEMBER_ADMINS[0]}
    held0=$(relay_stat key_count)
    log "cluster: storing $PEER_KEYS answers through member 1"
    # Counted by what member 1 holds, not by its misses: a request wrk
    # cuts off at the end of a run is never counted as a miss, yet its
    # answer is still fetched and stored.
    for _ in {1..20}; do
        run_wrk peer-fill 1 8 2 cycle "${MEMBER_URLS[0]}" "$BODY_TEMPLATE" "$PEER_RUN" "$PEER_KEYS" >/dev/null
        held=$(($(relay_stat key_count) - held0))
        ((held >= PEER_KEYS)) && break
    done
    ((held >= PEER_KEYS)) || die "member 1 holds only $held of $PEER_KEYS answers after 20 runs of 2 s"
    json=$(wait_replicated)
    failures=$(cluster_stat "$json" write_quorum_failures)
    ((failures == 0)) || die "$failures cluster writes missed their quorum while filling (log: $LOG_DIR/relaycache-member-1.log)"
    log "  $held answers stored and replicated"
}

# check_peer_hits KEY: the peer row measures L2 hits only if (nearly) every
# request of its run was answered by a peer, not by the client's memory nor
# the upstream. Sets CLUSTER_NOTE for the row; stops below 90%.
check_peer_hits() {
    local key=$1 lookups share
    lookups=$((HITS[$key] + MISSES[$key]))
    ((lookups > 0)) || die "the client counted no lookups in the $key run"
    share=$(calc '%.1f' '100 * p / n' "p=${PEER_HITS[$key]}" "n=$lookups")
    CLUSTER_NOTE[$key]="${PEER_HITS[$key]} hits answered by a peer ($share% of lookups)"
    if ((PEER_HITS[$key] * 100 < lookups * 90)); then
        die "only $share% of the client's $lookups lookups in the $key run were peer hits (want at least 90%):" \
            "${MISSES[$key]} misses, $((HITS[$key] - PEER_HITS[$key])) memory hits; raise BENCH_PEER_KEYS (now $PEER_KEYS)"
    fi
}

# note_replication KEY: member 1's cluster counts after a miss row.
note_replication() {
    local key=$1 json
    json=$(wait_replicated)
    CLUSTER_NOTE[$key]="member 1 so far: $(cluster_stat "$json" writes) cluster writes for $(json_number "$json" misses) misses,"
    CLUSTER_NOTE[$key]+=" $(cluster_stat "$json" write_quorum_failures) missed write_quorum,"
    CLUSTER_NOTE[$key]+=" $(cluster_stat "$json" replica_write_failures) replica writes failed"
}

# working_set_pass NAME URL: one pass over the first ROLLING_KEYS answers
# of the stored set through URL; prints "HITS TOTAL ERRORS".
working_set_pass() {
    local out
    out=$(python3 "$BENCH_DIR/working_set.py" "$2" "$BODY_TEMPLATE" "$PEER_RUN" "$ROLLING_KEYS" "$API_KEY") ||
        die "the working-set pass '$1' through $2 failed"
    log "  $1: $out (hits, requests, errors)"
    echo "$out"
}

# wait_gone NAME PID SECONDS: until PID exited on its own (a member leaving
# hands its entries off first); stops the run if it takes longer.
wait_gone() {
    local name=$1 pid=$2 _
    for _ in $(seq 1 $(($3 * 10))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    die "$name did not exit within $3 s of SIGTERM (log: $LOG_DIR/$name.log)"
}

# The rolling-restart measure. A client-mode relaycache (memory capped at
# 1 MiB, so most reads reach the cluster) reads the working set once in
# steady state; then each member in turn gets SIGTERM, the working set is
# read while it is away, the member is started again under its old gRPC
# address with an empty memory, and the set is read once more after the
# cluster re-formed. The figure is the hit ratio over those six passes
# against the steady pass.
measure_rolling_restart() {
    local client_grpc client_url client_admin client_pid i j h t e peer0
    free_port client_grpc
    start_ha relaycache-rolling-client false 1048576 "$client_grpc"
    client_url=$RELAY_URL client_admin=$RELAY_ADMIN client_pid=$RELAY_PID
    wait_members relaycache-rolling-client "$client_admin" 3
    log "rolling restart: a working set of $ROLLING_KEYS stored answers through a client"
    read -r h t e <<<"$(working_set_pass steady "$client_url")"
    ROLLING_STEADY=("$h" "$t" "$e")
    ROLLING_DURING=(0 0 0)
    RELAY_ADMIN=$client_admin
    peer0=$(relay_stat peer_hits)
    for i in 0 1 2; do
        local name="relaycache-member-$((i + 1))"
        kill -TERM "${MEMBER_PIDS[i]}"
        wait_gone "$name" "${MEMBER_PIDS[i]}" 30
        for ((j = 0; j < ${#PIDS[@]}; j++)); do
            [[ ${PIDS[j]} == "${MEMBER_PIDS[i]}" ]] && unset 'PIDS[j]'
        done
        PIDS=("${PIDS[@]}")
        read -r h t e <<<"$(working_set_pass "member $((i + 1)) away" "$client_url")"
        ROLLING_DURING=($((ROLLING_DURING[0] + h)) $((ROLLING_DURING[1] + t)) $((ROLLING_DURING[2] + e)))
        start_ha "$name" true 1073741824 "${MEMBER_GRPC[i]}"
        MEMBER_URLS[i]=$RELAY_URL MEMBER_ADMINS[i]=$RELAY_ADMIN MEMBER_PIDS[i]=$RELAY_PID
        for j in 0 1 2; do
            wait_members "relaycache-member-$((j + 1))" "${MEMBER_ADMINS[j]}" 3
        done
        wait_members relaycache-rolling-client "$client_admin" 3
        read -r h t e <<<"$(working_set_pass "member $((i + 1)) back" "$client_url")"
        ROLLING_DURING=($((ROLLING_DURING[0] + h)) $((ROLLING_DURING[1] + t)) $((ROLLING_DURING[2] + e)))
    done
    RELAY_ADMIN=$client_admin
    ROLLING_PEER_HITS=$(($(relay_stat peer_hits) - peer0))
    stop_child "$client_pid"
    ((ROLLING_DURING[2] == 0)) ||
        die "${ROLLING_DURING[2]} requests failed during the rolling restart (log: $LOG_DIR/relaycache-rolling-client.log)"
}

# rolling_target: the rolling-restart figure against its target (≥ 95% of
# the steady state's hit ratio).
rolling_target() {
    local share
    share=$(calc '%.1f' '100 * (h / t) / (sh / st)' "h=${ROLLING_DURING[0]}" "t=${ROLLING_DURING[1]}" \
        "sh=${ROLLING_STEADY[0]}" "st=${ROLLING_STEADY[1]}")
    if [[ $(calc '%d' 's >= 95' "s=$share") == 1 ]]; then
        echo "$share% of steady; target ≥ 95%: met"
    else
        echo "$share% of steady; target ≥ 95%: NOT met"
    fi
}

# The cluster rows. The L1 and L2 hit rows go through one client-mode
# relaycache, back to back: the fixed body from its memory, then the
# stored set, which its memory is too small to hold, from the peers. The
# miss rows go through member 1, whose every miss is written to the key's
# two replicas on top of what a single-mode miss does.
measure_cluster() {
    local i sample="$WORK/peer-sample.json" client_grpc
    start_cluster
    fill_cluster

    free_port client_grpc
    start_ha relaycache-client false 1048576 "$client_grpc"
    wait_members relaycache-client "$RELAY_ADMIN" 3
    # The first body of the set, never sent to this client: a peer hit.
    sed "s/@TAG@/$PEER_RUN-1/" "$BODY_TEMPLATE" >"$sample"
    local tier
    tier=$(post_fixed "$RELAY_URL" x-relaycache-tier "$sample")
    [[ $tier == "200 peer" ]] ||
        die "the client does not answer a stored answer from a peer: '$tier' (status and x-relaycache-tier; want '200 peer')"
    log "relaycache-client reads the cluster: $tier"
    expect_cached relaycache-client "$RELAY_URL" x-relaycache-status hit
    # Where a peer hit's time goes: the work of the client and of the
    # members per request, beside the same for a memory hit.
    WATCHED=([client]="$RELAY_PID" [members]="${MEMBER_PIDS[*]}")
    measure ha_l1_hit_1 "relaycache client, memory (L1) hits" 1 1 fixed "$RELAY_URL" "$RELAY_ADMIN"
    measure ha_peer_hit_1 "relaycache client, peer (L2) hits" 1 1 cycle "$RELAY_URL" "$RELAY_ADMIN"
    WATCHED=()
    check_peer_hits ha_peer_hit_1
    stop_child "$RELAY_PID"

    RELAY_ADMIN=${MEMBER_ADMINS[0]}
    local label="relaycache HA member misses, unique bodies (3 members, replica_count 2)"
    # A member's miss against a single relaycache's: the CPU of the three
    # members together and of the mock, beside wrk's own (see miss_rows).
    WATCHED=([members]="${MEMBER_PIDS[*]}" [mock]="$MOCK_PID")
    measure ha_miss_1 "$label" 1 1 unique "${MEMBER_URLS[0]}" "$RELAY_ADMIN"
    note_replication ha_miss_1
    measure ha_miss "$label" "$THREADS" "$CONNECTIONS" unique "${MEMBER_URLS[0]}" "$RELAY_ADMIN"
    note_replication ha_miss
    WATCHED=()
    measure_rolling_restart
    measure_flights
    for i in "${MEMBER_PIDS[@]}"; do
        stop_child "$i"
    done
}

# measure_flights: one new question asked by 40 at once, spread over the 3
# members and 4 clients, against an upstream that takes 1 s (how many
# upstream calls it makes); and a streamed question (20 events 50 ms apart)
# asked again as soon as the leader's first byte arrived, through the same
# client and through another (the follower's first byte after the
# leader's).
measure_flights() {
    local i grpc urls=("${MEMBER_URLS[@]}") client_urls=() client_pids=() relays
    for i in 1 2 3 4; do
        free_port grpc
        start_ha "relaycache-flight-client-$i" false 67108864 "$grpc"
        wait_members "relaycache-flight-client-$i" "$RELAY_ADMIN" 3
        client_urls+=("$RELAY_URL")
        client_pids+=("$RELAY_PID")
    done
    urls+=("${client_urls[@]}")
    relays=$(IFS=,; echo "${urls[*]}")
    FLIGHT_COALESCE=$(python3 "$BENCH_DIR/flight.py" coalesce --mock "$MOCK_URL" --relays "$relays") ||
        die "the cluster-wide coalescing measure failed (logs: $LOG_DIR)"
    log "cluster-wide coalescing: $FLIGHT_COALESCE"
    FLIGHT_LOCAL=$(python3 "$BENCH_DIR/flight.py" first-byte --leader "${client_urls[0]}" --follower "${client_urls[0]}") ||
        die "the live-stream measure (one process) failed (logs: $LOG_DIR)"
    FLIGHT_CLUSTER=$(python3 "$BENCH_DIR/flight.py" first-byte --leader "${client_urls[0]}" --follower "${client_urls[1]}") ||
        die "the live-stream measure (two clients) failed (logs: $LOG_DIR)"
    log "live stream, same process: $FLIGHT_LOCAL"
    log "live stream, another client: $FLIGHT_CLUSTER"
    for i in "${client_pids[@]}"; do
        stop_child "$i"
    done
}

# flight_field JSON EXPR: a Python expression over the measure's JSON `m`
# (median() at hand).
flight_field() {
    python3 -c 'import json, statistics, sys
m = json.loads(sys.argv[1]); median = statistics.median
print(eval(sys.argv[2]))' "$1" "$2"
}

# The flight rows of the report.
flight_rows() {
    [[ -n ${FLIGHT_COALESCE:-} ]] || return 0
    echo "| cluster-wide coalescing: upstream calls for one question asked by 40 at once over 3 members and 4 clients (upstream takes 1 s) |" \
        "$(flight_field "$FLIGHT_COALESCE" 'm["upstream_calls"]') call(s); $(flight_field "$FLIGHT_COALESCE" 'm["ok"]')/40 answered 200 |"
    local expr='"%.2f ms (max %.2f); last byte %+.2f ms" % (median(m["first_byte_after_leader_ms"]), max(m["first_byte_after_leader_ms"]), median(m["last_byte_after_leader_ms"]))'
    echo "| streamed miss (20 events 50 ms apart): a follower's first byte after the leader's, median of 5, same process |" \
        "$(flight_field "$FLIGHT_LOCAL" "$expr") |"
    echo "| the same, follower in another client of the cluster |" \
        "$(flight_field "$FLIGHT_CLUSTER" "$expr") |"
}

# move_rows_after ANCHOR KEY...: puts rows KEY... right after row ANCHOR,
# so the table groups rows by path rather than by when they ran.
move_rows_after() {
    local anchor=$1 row kept=()
    shift
    for row in "${ROWS[@]}"; do
        [[ " $* " == *" $row "* ]] && continue
        kept+=("$row")
        [[ $row == "$anchor" ]] && kept+=("$@")
    done
    ROWS=("${kept[@]}")
}

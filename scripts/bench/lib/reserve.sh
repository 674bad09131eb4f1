# shellcheck shell=bash
# scripts/bench.sh, reserve: The reserve rows: fill, wait for the writes, replay from a fresh process.
# Sourced by scripts/bench.sh; uses its settings and globals.
declare -A FILL_KEYS FILL_RPS # per fill tag: bodies each wrk thread made; req/s
declare -A FILL_WORK FILL_REQS # per fill tag: relaycache's "USER SYS SWITCHES" over it (see process_work); requests
declare -A RESERVE_NOTE       # per reserve row: what its replay read, for Checks
FILL_ERRORS=0                 # wrk errors in the fill runs: answers never stored

# expect_reserve NAME: a relaycache just started on a filled reserve must
# answer the fixed body (stored by the fill process) from the reserve, and
# the second time from memory, where the reserve hit put it.
expect_reserve() {
    local name=$1 first second
    first=$(post_fixed "$RELAY_URL" x-relaycache-tier)
    second=$(post_fixed "$RELAY_URL" x-relaycache-tier)
    if [[ $first != "200 reserve" || $second != "200 memory" ]]; then
        die "$name does not answer from its reserve after a restart: first answer '$first', second '$second'" \
            "(status and x-relaycache-tier; want '200 reserve', then '200 memory')"
    fi
    log "$name answers from the reserve after a restart: first $first, second $second"
}

# wrk_keys LOGNAME: the KEYS line unique.lua printed in that wrk run ("1=N
# 2=M ...": how many bodies each wrk thread made).
wrk_keys() {
    local keys
    keys=$(sed -n 's/^KEYS //p' "$LOG_DIR/wrk-$1.log" | tail -n 1)
    [[ -n $keys ]] || die "wrk printed no KEYS line ($1, see $LOG_DIR/wrk-$1.log)"
    echo "$keys"
}

# keys_used REPLAY FILL (two KEYS lines): the largest share, in percent,
# that a replay thread sent of the bodies the same fill thread made. Over
# 100 means the replay ran past what was stored.
keys_used() {
    awk -v replay="$1" -v fill="$2" 'BEGIN {
        n = split(fill, pairs, " ")
        for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); stored[kv[1]] = kv[2] }
        n = split(replay, pairs, " ")
        for (i = 1; i <= n; i++) {
            split(pairs[i], kv, "=")
            share = stored[kv[1]] > 0 ? 100 * kv[2] / stored[kv[1]] : 999
            if (share > most) most = share
        }
        printf "%.0f", most
    }'
}

# fill_reserve TAG SECONDS: unique bodies named TAG through the relaycache
# that stores into the reserve, at full load (-t THREADS -c CONNECTIONS).
# A later run with the same TAG and at most THREADS wrk threads sends the
# same bodies, as far as the fill got in each thread.
fill_reserve() {
    local tag=$1 seconds=$2 line before=() after=()
    log "reserve: storing answers to unique bodies ($tag) for ${seconds}s"
    wrk_args unique "$tag"
    read -r -a before <<<"$(process_work "$RELAY_PID")"
    line=$(run_wrk "$tag-fill" "$THREADS" "$CONNECTIONS" "$seconds" unique "$RELAY_URL" "${WRK_ARGS[@]}")
    read -r -a after <<<"$(process_work "$RELAY_PID")"
    FILL_WORK[$tag]="$((after[0] - before[0])) $((after[1] - before[1])) $((after[2] - before[2]))"
    FILL_REQS[$tag]=$(field "$line" requests)
    FILL_KEYS[$tag]=$(wrk_keys "$tag-fill")
    FILL_RPS[$tag]=$(field "$line" rps)
    FILL_ERRORS=$((FILL_ERRORS + $(field "$line" non2xx) + $(field "$line" socket_errors)))
    log "  ${FILL_RPS[$tag]} req/s; bodies per wrk thread: ${FILL_KEYS[$tag]}"
}

# wait_reserve_written: until the write-behind queue has caught up, that is
# every miss is written, dropped or failed and no write landed since the
# last look. Answers to requests wrk left in flight when it stopped are
# stored but not counted as misses, so writes can end a little above
# misses. Sets RESERVE_WRITES and RESERVE_MISSES.
wait_reserve_written() {
    local json writes=0 misses=0 dropped=0 failures=0 last=-1 _
    for _ in {1..600}; do # 0.2 s apart: 2 minutes
        json=$(relay_stats)
        writes=$(reserve_stat "$json" writes)
        dropped=$(reserve_stat "$json" dropped)
        failures=$(reserve_stat "$json" failures)
        misses=$(json_number "$json" misses)
        if ((writes + dropped + failures >= misses && writes == last)); then
            ((dropped + failures == 0)) ||
                die "the reserve lost answers: $dropped dropped (queue full), $failures failed (store errors, e.g. a full disk;" \
                    "see $LOG_DIR/relaycache-reserve-fill.log) of $misses; replaying them would miss"
            RESERVE_WRITES=$writes
            RESERVE_MISSES=$misses
            log "reserve: $writes answers written for $misses misses"
            return 0
        fi
        last=$writes
        sleep 0.2
    done
    die "the reserve's writes did not catch up within 2 minutes: $writes written, $dropped dropped, $failures failed, of $misses misses"
}

# check_reserve_hits KEY: a reserve row measures what it says only if
# (nearly) every request of its measured run was read from the reserve:
# not a memory hit (a body sent twice) nor a miss (a body the fill never
# got to). Sets RESERVE_NOTE for the row; stops below 95%.
check_reserve_hits() {
    local key=$1 lookups share used
    lookups=$((HITS[$key] + MISSES[$key]))
    ((lookups > 0)) || die "relaycache counted no lookups in the $key run"
    share=$(calc '%.1f' '100 * r / n' "r=${READS[$key]}" "n=$lookups")
    used=$(keys_used "$(wrk_keys "$key")" "${FILL_KEYS[reserve]}")
    RESERVE_NOTE[$key]="${READS[$key]} hits read from the reserve ($share% of lookups);"
    RESERVE_NOTE[$key]+=" the busiest wrk thread sent $used% of the bodies the fill stored for it"
    if ((READS[$key] * 100 < lookups * 95)); then
        die "only $share% of relaycache's $lookups lookups in the $key run were reserve hits (want at least 95%):" \
            "${MISSES[$key]} misses, $((HITS[$key] - READS[$key])) memory hits. The busiest wrk thread sent $used% of the bodies" \
            "the fill stored for it; over 100 means the replay outran the fill: raise BENCH_RESERVE_FILL (now $RESERVE_FILL)."
    fi
}

# replay_reserve KEY THREADS CONNS: a fresh relaycache on the filled
# reserve (memory empty) sent the fill's bodies again, one row.
replay_reserve() {
    local key=$1 threads=$2 conns=$3
    start_relaycache "relaycache-$key" "$RESERVE_DIR"
    expect_reserve "relaycache-$key"
    measure "$key" "relaycache reserve (file) hits" "$threads" "$conns" unique "$RELAY_URL" "$RELAY_ADMIN" reserve
    check_reserve_hits "$key"
    stop_child "$RELAY_PID"
}

# The reserve rows. One relaycache stores answers to unique bodies in a
# fresh reserve directory, for RESERVE_FILL times as long as each replay
# runs; then, for each row, a fresh process on that directory (memory
# empty, reserve full) is sent the same bodies again, since wrk threads of
# the same number make the same sequence as in the fill. One fill serves
# both rows: the 1-connection replay (one wrk thread) sends thread 1's
# bodies, the loaded one every thread's, each to a process of its own, so
# neither finds the other's reads in memory.
measure_reserve() {
    RESERVE_DIR=$(mktemp -d "$RESERVE_PARENT/relaycache-reserve.XXXXXX")
    start_relaycache relaycache-reserve-fill "$RESERVE_DIR"
    # Stores the fixed body as well, which expect_reserve asks for later.
    expect_cached relaycache-reserve-fill "$RELAY_URL" x-relaycache-status hit
    fill_reserve reserve-warmup $((RESERVE_FILL * WARMUP_SECONDS))
    fill_reserve reserve $((RESERVE_FILL * BENCH_SECONDS))
    wait_reserve_written
    stop_child "$RELAY_PID"
    RESERVE_DISK=$(du -sh "$RESERVE_DIR" | cut -f1)
    RESERVE_FS=$(df -PT "$RESERVE_DIR" | awk 'NR == 2 { print $2 }')
    # On disk before the replays, so that they do not share the machine with
    # the kernel writing out gigabytes of fresh files (they stay in the page
    # cache all the same).
    log "reserve: writing its $RESERVE_DISK out to disk (sync)"
    local started=$SECONDS
    sync -f "$RESERVE_DIR"
    log "  took $((SECONDS - started)) s"

    replay_reserve reserve_hit_1 1 1
    replay_reserve reserve_hit "$THREADS" "$CONNECTIONS"

    # Removed at once: the memory run should not share the machine with
    # the kernel writing gigabytes of it to disk.
    log "reserve: removing $RESERVE_DIR ($RESERVE_DISK)"
    rm -rf "$RESERVE_DIR"
    RESERVE_DIR=""
}

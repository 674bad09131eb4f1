# shellcheck shell=bash
# scripts/bench.sh, wrk: Closed-loop measurement rows with wrk.
# Sourced by scripts/bench.sh; uses its settings and globals.
# run_wrk LOGNAME THREADS CONNS SECONDS SCRIPT URL ARGS...: one wrk run;
# prints the BENCH line of scripts/bench/common.lua's done().
run_wrk() {
    local name=$1 threads=$2 conns=$3 seconds=$4 script=$5 url=$6
    shift 6
    local logfile="$LOG_DIR/wrk-$name.log" line
    # wrk shares the machine's two cores with the servers it loads, so
    # its own CPU is part of every row's figure: this shell's children's
    # times (the builtin, run in this shell) before and after it.
    times >"$logfile.times"
    if ! wrk -t"$threads" -c"$conns" -d"${seconds}s" -s "$BENCH_DIR/$script.lua" "$url" -- "$@" >"$logfile" 2>&1; then
        cat "$logfile" >&2
        die "wrk failed ($name)"
    fi
    times >>"$logfile.times"
    line=$(grep '^BENCH ' "$logfile" | tail -n 1) || die "wrk printed no result line ($name, see $logfile)"
    echo "$line $(children_cpu_us "$logfile.times")"
}

# children_cpu_us FILE: from two outputs of the times builtin, the CPU the
# shell's children used between them, "wrk_user_us=U wrk_sys_us=S".
children_cpu_us() {
    # Lines 2 and 4 are the children's user and system times, "1m2.345s".
    awk 'NR == 2 || NR == 4 {
            for (i = 1; i <= 2; i++) {
                split($i, part, /[ms]/)
                spent[i] += (NR == 4 ? 1 : -1) * (part[1] * 60 + part[2])
            }
        }
        END { printf "wrk_user_us=%d wrk_sys_us=%d", spent[1] * 1e6, spent[2] * 1e6 }' "$1"
}

# Results by row key.
declare -A LABEL CONNS REQS RPS P50 P99 NON2XX SOCKERR NOTE
# relaycache's own counts over a measured run: hits (memory, reserve and
# peers), misses, the hits read from the reserve and those from peers.
declare -A HITS MISSES READS PEER_HITS
# Processes whose work measure counts over a measured run, by group name
# (set around the rows that want it, see measure_cluster), and what it
# counted: ROW_WORK["KEY GROUP"] is "USER SYS SWITCHES" (CPU ticks and
# context switches, see process_work). WRK_CPU[KEY] is wrk's own CPU over
# the row, "USER SYS" in µs.
declare -A WATCHED=() ROW_WORK=() WRK_CPU=()
ROWS=()
WRK_ARGS=()

# wrk_args SCRIPT RUN: sets WRK_ARGS to what SCRIPT.lua expects after "--".
# Each unique run gets its own tag, so no run repeats an earlier run's bodies
# (the warm-up would otherwise have stored the measured run's answers).
wrk_args() {
    if [[ $1 == fixed ]]; then
        WRK_ARGS=("$FIXED_BODY")
    elif [[ $1 == cycle ]]; then
        # Always the set stored in the cluster, whatever the run.
        WRK_ARGS=("$BODY_TEMPLATE" "$PEER_RUN" "$PEER_KEYS")
    else
        WRK_ARGS=("$BODY_TEMPLATE" "$RUN_ID-$2")
    fi
}

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# measure KEY LABEL THREADS CONNS SCRIPT URL [ADMIN [TAG]]: a warm-up run,
# then the measured one. For relaycache rows (ADMIN given) /stats is read
# around the measured run to confirm it really hit or missed. TAG (KEY if
# not given) names the unique bodies: runs with the same TAG and thread
# count send the same ones.
measure() {
    local key=$1 label=$2 threads=$3 conns=$4 script=$5 url=$6 admin=${7:-} tag=${8:-$1}
    local line counts hits0 misses0 reads0 peer0 hits1 misses1 reads1 peer1
    log "$label, $conns connection(s): warm-up ${WARMUP_SECONDS}s, then ${BENCH_SECONDS}s"
    wrk_args "$script" "$tag-warmup"
    run_wrk "$key-warmup" "$threads" "$conns" "$WARMUP_SECONDS" "$script" "$url" "${WRK_ARGS[@]}" >/dev/null
    if [[ -n $admin ]]; then
        counts=$(relay_counts)
        read -r hits0 misses0 reads0 peer0 <<<"$counts"
    fi
    wrk_args "$script" "$tag"
    local group before=() after=()
    local -A at_start=()
    for group in "${!WATCHED[@]}"; do
        # shellcheck disable=SC2086 # a list of pids
        at_start[$group]=$(process_work ${WATCHED[$group]})
    done
    line=$(run_wrk "$key" "$threads" "$conns" "$BENCH_SECONDS" "$script" "$url" "${WRK_ARGS[@]}")
    for group in "${!WATCHED[@]}"; do
        read -r -a before <<<"${at_start[$group]}"
        # shellcheck disable=SC2086 # a list of pids
        read -r -a after <<<"$(process_work ${WATCHED[$group]})"
        ROW_WORK["$key $group"]="$((after[0] - before[0])) $((after[1] - before[1])) $((after[2] - before[2]))"
    done
    ROWS+=("$key")
    LABEL[$key]=$label
    CONNS[$key]=$conns
    REQS[$key]=$(field "$line" requests)
    RPS[$key]=$(field "$line" rps)
    P50[$key]=$(field "$line" p50_ms)
    P99[$key]=$(field "$line" p99_ms)
    NON2XX[$key]=$(field "$line" non2xx)
    SOCKERR[$key]=$(field "$line" socket_errors)
    WRK_CPU[$key]="$(field "$line" wrk_user_us) $(field "$line" wrk_sys_us)"
    if [[ -n $admin ]]; then
        counts=$(relay_counts)
        read -r hits1 misses1 reads1 peer1 <<<"$counts"
        HITS[$key]=$((hits1 - hits0))
        MISSES[$key]=$((misses1 - misses0))
        READS[$key]=$((reads1 - reads0))
        PEER_HITS[$key]=$((peer1 - peer0))
        NOTE[$key]="relaycache counted ${HITS[$key]} hits, ${MISSES[$key]} misses"
    fi
    log "  ${RPS[$key]} req/s, p50 ${P50[$key]} ms, p99 ${P99[$key]} ms"
}

# Hits of a second relaycache at the default log level (info: one line per
# request, written off the request path), next to the rows at warn; the
# first relaycache is kept for the rows after it. Then nginx and this
# relaycache in turn, 5 s each, HIT_ROUNDS times, each round in the other
# order: separate rows a minute apart differ by as much as the machine's
# speed drifts in that minute. Sets HIT_SUMS (requests: nginx, relaycache)
# and HIT_CPU (the servers' CPU ticks in those runs: nginx user, nginx
# system, relaycache user, relaycache system) and HIT_WRK_CPU (wrk's own
# CPU in those runs, µs, in the same order).
measure_default_config() {
    local pid=$RELAY_PID url=$RELAY_URL admin=$RELAY_ADMIN
    start_relaycache relaycache-default "" info
    expect_cached relaycache-default "$RELAY_URL" x-relaycache-status hit
    measure relay_hit_default "relaycache hits, default config (log level info)" \
        "$THREADS" "$CONNECTIONS" fixed "$RELAY_URL" "$RELAY_ADMIN"
    local round line side user0 sys0 user1 sys1
    local -a sums=(0 0) urls=("$NGINX_URL" "$RELAY_URL") names=(nginx relaycache) order
    local -a pids=("$(nginx_pids)" "$RELAY_PID") cpu=(0 0 0 0) load=(0 0 0 0)
    log "hits, interleaved: $HIT_ROUNDS rounds of 5 s each against nginx and relaycache at the default config"
    for ((round = 1; round <= HIT_ROUNDS; round++)); do
        order=(0 1)
        ((round % 2)) || order=(1 0)
        for side in "${order[@]}"; do
            # shellcheck disable=SC2086 # a list of pids
            read -r user0 sys0 <<<"$(cpu_ticks ${pids[side]})"
            line=$(run_wrk "hits-${names[side]}-$round" "$THREADS" "$CONNECTIONS" 5 fixed "${urls[side]}" "$FIXED_BODY")
            # shellcheck disable=SC2086
            read -r user1 sys1 <<<"$(cpu_ticks ${pids[side]})"
            sums[side]=$((sums[side] + $(field "$line" requests)))
            cpu[2 * side]=$((cpu[2 * side] + user1 - user0))
            cpu[2 * side + 1]=$((cpu[2 * side + 1] + sys1 - sys0))
            load[2 * side]=$((load[2 * side] + $(field "$line" wrk_user_us)))
            load[2 * side + 1]=$((load[2 * side + 1] + $(field "$line" wrk_sys_us)))
        done
    done
    HIT_SUMS=("${sums[@]}")
    HIT_CPU=("${cpu[@]}")
    HIT_WRK_CPU=("${load[@]}")
    log "  requests: ${sums[0]} nginx, ${sums[1]} relaycache; CPU ticks (user, sys): nginx ${cpu[0]}, ${cpu[1]}; relaycache ${cpu[2]}, ${cpu[3]}"
    stop_child "$RELAY_PID"
    RELAY_PID=$pid RELAY_URL=$url RELAY_ADMIN=$admin
}

# Hits of compressed entries against uncompressed ones, in the same run:
# the relaycache above (zstd, the default) sending hits to a client that
# accepts zstd (as stored), and a relaycache storing answers as received.
# The relay_hit row is the same process decoding for a client without
# zstd. Then the three in turn, 5 s each, COMPRESSION_ROUNDS times: the
# machine's speed drifts over a run, and interleaving cancels most of
# the drift that separate rows would show as a difference. Sets
# COMPRESSION_SUMS (requests: decoded, as stored, uncompressed).
measure_compression() {
    BENCH_ACCEPT_ENCODING=zstd measure relay_hit_zstd "relaycache hits, client accepts zstd (sent as stored)" \
        "$THREADS" "$CONNECTIONS" fixed "$RELAY_URL" "$RELAY_ADMIN"
    local pid=$RELAY_PID url=$RELAY_URL admin=$RELAY_ADMIN
    start_relaycache relaycache-uncompressed "" warn none
    expect_cached relaycache-uncompressed "$RELAY_URL" x-relaycache-status hit
    measure relay_hit_plain "relaycache hits, compression off (codec none)" \
        "$THREADS" "$CONNECTIONS" fixed "$RELAY_URL" "$RELAY_ADMIN"
    local plain_url=$RELAY_URL plain_pid=$RELAY_PID round line
    local -a sums=(0 0 0)
    log "compression, interleaved: $COMPRESSION_ROUNDS rounds of 5 s each against decoded, as stored, uncompressed"
    for ((round = 1; round <= COMPRESSION_ROUNDS; round++)); do
        line=$(BENCH_ACCEPT_ENCODING='' run_wrk "compression-decoded-$round" "$THREADS" "$CONNECTIONS" 5 fixed "$url" "$FIXED_BODY")
        sums[0]=$((sums[0] + $(field "$line" requests)))
        line=$(BENCH_ACCEPT_ENCODING=zstd run_wrk "compression-stored-$round" "$THREADS" "$CONNECTIONS" 5 fixed "$url" "$FIXED_BODY")
        sums[1]=$((sums[1] + $(field "$line" requests)))
        line=$(BENCH_ACCEPT_ENCODING='' run_wrk "compression-plain-$round" "$THREADS" "$CONNECTIONS" 5 fixed "$plain_url" "$FIXED_BODY")
        sums[2]=$((sums[2] + $(field "$line" requests)))
    done
    COMPRESSION_SUMS=("${sums[@]}")
    log "  requests: ${sums[0]} decoded, ${sums[1]} as stored, ${sums[2]} uncompressed"
    stop_child "$plain_pid"
    RELAY_PID=$pid RELAY_URL=$url RELAY_ADMIN=$admin
}

# The memory run: a fresh relaycache (storing answers with codec $1, zstd
# by default), its RSS before and after storing as many unique answers as
# wrk can push through in MEM_SECONDS. Sets MEM_* (zstd) or MEM_PLAIN_*
# (none).
measure_memory() {
    local codec=${1:-zstd}
    start_relaycache "relaycache-memory-$codec" "" warn "$codec"
    # One miss and one hit first, so lazily built state (upstream connection
    # pool, runtime workers) is in the baseline, not counted as cache memory.
    expect_cached "relaycache-memory-$codec" "$RELAY_URL" x-relaycache-status hit
    local rss0 keys0 line
    keys0=$(relay_stat key_count)
    rss0=$(vm_rss_kb "$RELAY_PID")
    log "memory: filling a fresh relaycache (codec $codec) with unique answers for ${MEM_SECONDS}s"
    wrk_args unique "memory-$codec"
    line=$(run_wrk memory-fill "$THREADS" "$CONNECTIONS" "$MEM_SECONDS" unique "$RELAY_URL" "${WRK_ARGS[@]}")
    MEM_REQUESTS=$(field "$line" requests)
    MEM_ERRORS=$(($(field "$line" non2xx) + $(field "$line" socket_errors)))
    MEM_KEYS=$(($(relay_stat key_count) - keys0))
    MEM_BYTES_USED=$(relay_stat bytes_used)
    MEM_EVICTIONS=$(relay_stat evictions)
    MEM_RSS_KB=$(($(vm_rss_kb "$RELAY_PID") - rss0))
    log "  $MEM_KEYS new keys, RSS +$MEM_RSS_KB KiB"
    stop_child "$RELAY_PID"
    if [[ $codec == none ]]; then
        MEM_PLAIN_KEYS=$MEM_KEYS MEM_PLAIN_RSS_KB=$MEM_RSS_KB MEM_PLAIN_BYTES_USED=$MEM_BYTES_USED
    fi
}

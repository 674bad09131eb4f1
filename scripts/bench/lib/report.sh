# shellcheck shell=bash
# scripts/bench.sh, report: The table: ratios, targets, the machine and revision, latest.md.
# Sourced by scripts/bench.sh; uses its settings and globals.
# calc FORMAT EXPR VAR=VALUE...: awk arithmetic; "n/a" on division by zero.
calc() {
    local format=$1 expr=$2 vars=() pair
    shift 2
    for pair in "$@"; do vars+=(-v "$pair"); done
    awk "${vars[@]}" "BEGIN { r = ($expr); if (r == \"nan\" || r == \"inf\") print \"n/a\"; else printf \"$format\", r }" 2>/dev/null || echo "n/a"
}

ratio() { # a ÷ b, "n/a" when b is 0
    if [[ $(calc '%d' "b == 0" "b=$2") == 1 ]]; then echo "n/a"; else calc '%.2f' 'a / b' "a=$1" "b=$2"; fi
}

machine() {
    local cpu
    cpu=$(awk -F': ' '$1 ~ /^model name/ { print $2; exit }' /proc/cpuinfo)
    printf '%s CPU(s) (nproc), %s, Linux %s' "$(nproc)" "${cpu:-unknown CPU}" "$(uname -r)"
}

revision() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || {
        echo "unknown"
        return
    }
    [[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] || rev+=" (with uncommitted changes)"
    echo "$rev"
}

# The reserve's target: p50 at most 2 ms, for the default 5000-byte answer.
reserve_target() {
    if ((ANSWER_BYTES != 5000)); then
        echo "the target (p50 ≤ 2 ms) is for the default 5000-byte answer, not $ANSWER_BYTES"
    elif [[ $(calc '%d' 'p <= 2' "p=${P50[reserve_hit_1]}") == 1 ]]; then
        echo "target p50 ≤ 2 ms for the 5 KB answer: met"
    else
        echo "target p50 ≤ 2 ms for the 5 KB answer: NOT met"
    fi
}

# The peer hit's target: p50 at most 1 ms on loopback.
peer_target() {
    if [[ $(calc '%d' 'p <= 1' "p=${P50[ha_peer_hit_1]}") == 1 ]]; then
        echo "target p50 ≤ 1 ms on loopback: met"
    else
        echo "target p50 ≤ 1 ms on loopback: NOT met"
    fi
}

# The measured rows, and the first comparison every report makes.
rows_table() {
    echo "| Configuration | Conns | Requests | req/s | p50 ms | p99 ms | Errors (HTTP ≥400 / socket) |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for key in "${ROWS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s / %s |\n' "${LABEL[$key]}" "${CONNS[$key]}" "${REQS[$key]}" \
            "${RPS[$key]}" "${P50[$key]}" "${P99[$key]}" "${NON2XX[$key]}" "${SOCKERR[$key]}"
    done
    echo
    echo "| Comparison | Value |"
    echo "|---|---|"
    echo "| relaycache hit req/s ÷ nginx hit req/s | $(ratio "${RPS[relay_hit]}" "${RPS[nginx_hit]}")× |"
    echo "| relaycache hit req/s at the default config (log info) ÷ nginx hit req/s | $(ratio "${RPS[relay_hit_default]:-0}" "${RPS[nginx_hit]}")× |"
    echo "| the same, interleaved ($HIT_ROUNDS rounds of 5 s each, alternating which goes first, requests summed) |" \
        "$(ratio "${HIT_SUMS[1]}" "${HIT_SUMS[0]}")× (${HIT_SUMS[1]} / ${HIT_SUMS[0]} requests) |"
    echo "| CPU per hit in those rounds, user + system: nginx (master and workers) / relaycache |" \
        "$(cpu_per_request "${HIT_CPU[0]}" "${HIT_CPU[1]}" "${HIT_SUMS[0]}") /" \
        "$(cpu_per_request "${HIT_CPU[2]}" "${HIT_CPU[3]}" "${HIT_SUMS[1]}") |"
    echo "| wrk's own CPU per request in those rounds, user + system: against nginx / against relaycache |" \
        "$(us_per_request "${HIT_WRK_CPU[0]}" "${HIT_WRK_CPU[1]}" "${HIT_SUMS[0]}") /" \
        "$(us_per_request "${HIT_WRK_CPU[2]}" "${HIT_WRK_CPU[3]}" "${HIT_SUMS[1]}") |"
    local nginx_request relaycache_load relaycache_hit
    nginx_request=$(calc '%.1f' '(t * 1e6 / hz + w) / n' "t=$((HIT_CPU[0] + HIT_CPU[1]))" "hz=$(getconf CLK_TCK)" \
        "w=$((HIT_WRK_CPU[0] + HIT_WRK_CPU[1]))" "n=${HIT_SUMS[0]}")
    relaycache_load=$(calc '%.1f' 'w / n' "w=$((HIT_WRK_CPU[2] + HIT_WRK_CPU[3]))" "n=${HIT_SUMS[1]}")
    relaycache_hit=$(calc '%.1f' 't * 1e6 / hz / n' "t=$((HIT_CPU[2] + HIT_CPU[3]))" "hz=$(getconf CLK_TCK)" "n=${HIT_SUMS[1]}")
    echo "| relaycache CPU per hit that 1.5× nginx's hits leaves on these two cores: (wrk + nginx per nginx hit) ÷ 1.5 − wrk per relaycache hit |" \
        "$(calc '%.1f' 'r / 1.5 - w' "r=$nginx_request" "w=$relaycache_load") µs, against $relaycache_hit µs measured |"
    miss_rows
}

# miss_rows: the miss path against the mock alone and against nginx as a
# plain proxy, and the CPU each request costs: wrk, the mock, the proxy.
miss_rows() {
    echo "| nginx proxy_pass (no cache) req/s ÷ mock direct req/s, $CONNECTIONS / 1 connection(s) |" \
        "$(ratio "${RPS[nginx_pass]}" "${RPS[mock_unique]}")× / $(ratio "${RPS[nginx_pass_1]}" "${RPS[mock_unique_1]}")× |"
    echo "| relaycache miss req/s ÷ nginx proxy_pass req/s, $CONNECTIONS / 1 connection(s) |" \
        "$(ratio "${RPS[relay_miss]}" "${RPS[nginx_pass]}")× / $(ratio "${RPS[relay_miss_1]}" "${RPS[nginx_pass_1]}")× |"
    echo "| CPU per request, $CONNECTIONS connections, wrk / mock / proxy (user + system each): mock direct; nginx proxy_pass; relaycache misses |" \
        "$(row_cpu mock_unique) / –; $(row_cpu nginx_pass nginx); $(row_cpu relay_miss relaycache) |"
    # wrk and the mock spend more per request the slower the proxy in
    # front (fewer requests per wake-up): the allowance takes what they
    # spent behind nginx, so that it is what a proxy as light as nginx may
    # spend, and what is over it is the cache's own work.
    local direct proxied
    direct=$(calc '%.1f' 'a + b' "a=$(row_us mock_unique wrk)" "b=$(row_us mock_unique mock)")
    proxied=$(calc '%.1f' 'a + b' "a=$(row_us nginx_pass wrk)" "b=$(row_us nginx_pass mock)")
    echo "| proxy CPU per request that 0.6× of the mock direct leaves on these two cores: (wrk + mock per direct request) ÷ 0.6 − (wrk + mock) per request through nginx proxy_pass |" \
        "$(calc '%.1f' 'd / 0.6 - p' "d=$direct" "p=$proxied") µs; nginx proxy_pass spent $(row_us nginx_pass nginx) µs," \
        "relaycache $(row_us relay_miss relaycache) µs per miss |"
}

# ha_cpu_row: a member's miss against a single relaycache's, in CPU.
ha_cpu_row() {
    local single member_load
    single=$(calc '%.1f' 'a + b + c' "a=$(row_us relay_miss wrk)" "b=$(row_us relay_miss mock)" "c=$(row_us relay_miss relaycache)")
    member_load=$(calc '%.1f' 'a + b' "a=$(row_us ha_miss wrk)" "b=$(row_us ha_miss mock)")
    echo "| CPU per miss, $CONNECTIONS connections, user + system: single relaycache / the three members together |" \
        "$(group_cpu relay_miss relaycache) / $(group_cpu ha_miss members) |"
    echo "| members' CPU per miss that 0.7× of single mode leaves on these two cores: (wrk + mock + relaycache) per single miss ÷ 0.7 − (wrk + mock) per member miss |" \
        "$(calc '%.1f' 's / 0.7 - l' "s=$single" "l=$member_load") µs, against $(row_us ha_miss members) µs measured |"
}

# row_cpu KEY [PROXY]: "W / M[ / P]": wrk's, the mock's and PROXY's CPU per
# request over row KEY, each "U + S µs".
row_cpu() {
    local key=$1 load=()
    read -r -a load <<<"${WRK_CPU[$key]:-0 0}"
    printf '%s / %s' "$(us_per_request "${load[0]}" "${load[1]}" "${REQS[$key]}")" "$(group_cpu "$key" mock)"
    [[ -z ${2:-} ]] || printf ' / %s' "$(group_cpu "$key" "$2")"
}

# group_cpu KEY GROUP: what measure counted for GROUP over row KEY, per
# request, "U + S µs".
group_cpu() {
    local work=()
    read -r -a work <<<"${ROW_WORK["$1 $2"]:-0 0 0}"
    cpu_per_request "${work[0]}" "${work[1]}" "${REQS[$1]}"
}

# row_us KEY GROUP: GROUP's CPU per request over row KEY in µs, user and
# system together; GROUP wrk is wrk's own.
row_us() {
    local work=()
    if [[ $2 == wrk ]]; then
        read -r -a work <<<"${WRK_CPU[$1]:-0 0}"
        calc '%.1f' '(u + s) / n' "u=${work[0]}" "s=${work[1]}" "n=${REQS[$1]}"
    else
        read -r -a work <<<"${ROW_WORK["$1 $2"]:-0 0 0}"
        calc '%.1f' '(u + s) * 1e6 / hz / n' "u=${work[0]}" "s=${work[1]}" "hz=$(getconf CLK_TCK)" "n=${REQS[$1]}"
    fi
}

# us_per_request USER_US SYS_US REQUESTS: "U + S µs".
us_per_request() {
    echo "$(calc '%.1f' 'u / n' "u=$1" "n=$3") + $(calc '%.1f' 's / n' "s=$2" "n=$3") µs"
}

# cpu_per_request USER_TICKS SYS_TICKS REQUESTS: "U + S µs".
cpu_per_request() {
    local hz
    hz=$(getconf CLK_TCK)
    echo "$(calc '%.1f' 'u * 1e6 / hz / n' "u=$1" "hz=$hz" "n=$3") + $(calc '%.1f' 's * 1e6 / hz / n' "s=$2" "hz=$hz" "n=$3") µs"
}

# peer_rows: the peer hit against the memory hit, and the work of each.
peer_rows() {
    echo "| peer (L2) hit vs memory (L1) hit, client, 1 connection: p50 / p99 | ${P50[ha_peer_hit_1]} / ${P99[ha_peer_hit_1]} ms" \
        "vs ${P50[ha_l1_hit_1]} / ${P99[ha_l1_hit_1]} ms; p50 $(ratio "${P50[ha_peer_hit_1]}" "${P50[ha_l1_hit_1]}")×; $(peer_target) |"
    echo "| work per request, 1 connection, CPU user + system (context switches): memory hits, client / peer hits, client + members |" \
        "$(work_per_request ha_l1_hit_1 client) / $(work_per_request ha_peer_hit_1 client) + $(work_per_request ha_peer_hit_1 members) |"
}

# work_per_request KEY GROUP: what measure counted for GROUP over row
# KEY, per request: "U + S µs (C)", C context switches.
work_per_request() {
    local work=()
    read -r -a work <<<"${ROW_WORK["$1 $2"]:-0 0 0}"
    echo "$(group_cpu "$1" "$2") ($(calc '%.1f' 'c / n' "c=${work[2]}" "n=${REQS[$1]}"))"
}

report() {
    local key wrk_version nginx_version
    wrk_version=$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }' || true)
    nginx_version=$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')
    echo "# relaycache benchmark"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(machine)"
    echo "- relaycache revision: $(revision); wrk ${wrk_version:-?}; nginx ${nginx_version:-?}"
    echo "- Load: wrk -t$THREADS -c$CONNECTIONS -d${BENCH_SECONDS}s (1-connection rows: -t1 -c1), each after a ${WARMUP_SECONDS} s warm-up;" \
        "wrk, the proxies and the mock share the machine"
    echo "- Request: POST /v1/messages, $(wc -c <"$FIXED_BODY") byte body; answer: $ANSWER_SIZE bytes (Content-Length)"
    echo "- Reserve rows: relaycache restarted on a file:// reserve ($RESERVE_FS) filled with the answers it is then asked for;" \
        "the files were just written (and synced), so they are read through the OS page cache, not from the disk"
    echo "- Cluster rows: three members (mode ha, replica_count 2, write_quorum 1, environment local) and a client-mode relaycache" \
        "(memory capped at 1 MiB), on this machine's loopback and CPUs; the peer row cycles over $PEER_KEYS answers stored" \
        "through member 1, the HA miss rows go through member 1"
    echo
    rows_table
    echo "| relaycache hit p99 vs nginx hit p99 | ${P99[relay_hit]} ms vs ${P99[nginx_hit]} ms ($(ratio "${P99[relay_hit]}" "${P99[nginx_hit]}")×) |"
    echo "| relaycache hit req/s ÷ mock direct req/s | $(ratio "${RPS[relay_hit]}" "${RPS[mock_fixed]}")× |"
    echo "| hits stored compressed ÷ stored as received, rows above: client without zstd / client accepting zstd |" \
        "$(ratio "${RPS[relay_hit]}" "${RPS[relay_hit_plain]}")× / $(ratio "${RPS[relay_hit_zstd]}" "${RPS[relay_hit_plain]}")× |"
    echo "| the same, interleaved ($COMPRESSION_ROUNDS rounds of 5 s each, requests summed) |" \
        "$(ratio "${COMPRESSION_SUMS[0]}" "${COMPRESSION_SUMS[2]}")× / $(ratio "${COMPRESSION_SUMS[1]}" "${COMPRESSION_SUMS[2]}")×" \
        "(${COMPRESSION_SUMS[0]} / ${COMPRESSION_SUMS[1]} / ${COMPRESSION_SUMS[2]} requests) |"
    echo "| relaycache miss req/s ÷ mock direct req/s, $CONNECTIONS connections | $(ratio "${RPS[relay_miss]}" "${RPS[mock_unique]}")× |"
    echo "| miss path added p50, 1 connection | $(calc '%+.3f' 'a - b' "a=${P50[relay_miss_1]}" "b=${P50[mock_unique_1]}") ms" \
        "(${P50[mock_unique_1]} → ${P50[relay_miss_1]} ms) |"
    echo "| miss path added p50, $CONNECTIONS connections | $(calc '%+.3f' 'a - b' "a=${P50[relay_miss]}" "b=${P50[mock_unique]}") ms" \
        "(${P50[mock_unique]} → ${P50[relay_miss]} ms) |"
    echo "| reserve hit p50 / p99 (1 connection) | ${P50[reserve_hit_1]} / ${P99[reserve_hit_1]} ms; $(reserve_target) |"
    echo "| reserve hit req/s ÷ relaycache miss req/s, $CONNECTIONS connections (both unique bodies) |" \
        "$(ratio "${RPS[reserve_hit]}" "${RPS[relay_miss]}")× |"
    peer_rows
    echo "| HA member miss req/s ÷ single-mode miss req/s, 1 connection | $(ratio "${RPS[ha_miss_1]}" "${RPS[relay_miss_1]}")×" \
        "(p50 ${P50[relay_miss_1]} → ${P50[ha_miss_1]} ms) |"
    echo "| HA member miss req/s ÷ single-mode miss req/s, $CONNECTIONS connections | $(ratio "${RPS[ha_miss]}" "${RPS[relay_miss]}")×" \
        "(p50 ${P50[relay_miss]} → ${P50[ha_miss]} ms) |"
    ha_cpu_row
    flight_rows
    echo "| hit ratio during a rolling restart of the 3 members ÷ steady state (client, $ROLLING_KEYS stored answers) |" \
        "${ROLLING_DURING[0]}/${ROLLING_DURING[1]} during vs ${ROLLING_STEADY[0]}/${ROLLING_STEADY[1]} steady" \
        "($ROLLING_PEER_HITS answered by a peer): $(rolling_target) |"
    echo "| memory: RSS growth ÷ (new keys × answer bytes) | $(calc '%.2f' 'rss * 1024 / (keys * size)' \
        "rss=$MEM_RSS_KB" "keys=$MEM_KEYS" "size=$ANSWER_SIZE") ($MEM_RSS_KB KiB for $MEM_KEYS answers of $ANSWER_SIZE bytes) |"
    echo "| memory, compression off (codec none): RSS growth ÷ (new keys × answer bytes) | $(calc '%.2f' 'rss * 1024 / (keys * size)' \
        "rss=$MEM_PLAIN_RSS_KB" "keys=$MEM_PLAIN_KEYS" "size=$ANSWER_SIZE") ($MEM_PLAIN_RSS_KB KiB for $MEM_PLAIN_KEYS answers;" \
        "bytes_used ÷ key_count $(calc '%.0f' 'used / keys' "used=$MEM_PLAIN_BYTES_USED" "keys=$MEM_PLAIN_KEYS")) |"
    echo "| memory: relaycache's own count, bytes_used ÷ key_count | $(calc '%.0f' 'used / keys' \
        "used=$MEM_BYTES_USED" "keys=$MEM_KEYS") bytes per entry |"
    echo "| misses with a file:// reserve ÷ misses without, $CONNECTIONS connections | $(ratio "${FILL_RPS[reserve]}" "${RPS[relay_miss]}")× |"
    local fill=()
    read -r -a fill <<<"${FILL_WORK[reserve]:-0 0 0}"
    echo "| relaycache's CPU per miss, $CONNECTIONS connections, user + system: without a reserve / with a file:// reserve (its writer thread included) |" \
        "$(group_cpu relay_miss relaycache) / $(cpu_per_request "${fill[0]}" "${fill[1]}" "${FILL_REQS[reserve]:-0}") |"
    open_loop_table
    echo
    echo "Checks:"
    echo
    for key in "${ROWS[@]}"; do
        [[ -z ${NOTE[$key]:-} ]] ||
            echo "- ${LABEL[$key]}, ${CONNS[$key]} conn(s): ${NOTE[$key]} in ${REQS[$key]} requests${RESERVE_NOTE[$key]:+; ${RESERVE_NOTE[$key]}}${CLUSTER_NOTE[$key]:+; ${CLUSTER_NOTE[$key]}}"
    done
    echo "- reserve fill: $RESERVE_WRITES answers written for $RESERVE_MISSES misses, none dropped or failed," \
        "$FILL_ERRORS wrk errors; $RESERVE_DISK on disk. Its misses (writing to the reserve) ran at ${FILL_RPS[reserve]} req/s" \
        "at $CONNECTIONS connections, the reserve-less ones above at ${RPS[relay_miss]}"
    echo "- memory run: $MEM_REQUESTS requests, $MEM_ERRORS errors, $MEM_EVICTIONS evictions" \
        "(evictions > 0 means the 1 GiB cache filled up and the ratio undercounts keys)"
    echo "- Errors counts wrk's \"Non-2xx or 3xx\" (answers with status ≥400) and socket errors (connect, read, write, timeout)."
}

# The hit and miss rows only (BENCH_PARTS=core).
report_core() {
    echo "# relaycache benchmark (hit and miss rows)"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(machine); binary: $RELAY_BIN"
    echo "- Load: wrk -t$THREADS -c$CONNECTIONS -d${BENCH_SECONDS}s (1-connection rows: -t1 -c1), each after a ${WARMUP_SECONDS} s warm-up"
    echo
    rows_table
    echo "| relaycache hit req/s ÷ mock direct req/s | $(ratio "${RPS[relay_hit]}" "${RPS[mock_fixed]}")× |"
    echo "| relaycache miss req/s ÷ mock direct req/s, $CONNECTIONS connections | $(ratio "${RPS[relay_miss]}" "${RPS[mock_unique]}")× |"
    echo "| relaycache miss req/s ÷ mock direct req/s, 1 connection | $(ratio "${RPS[relay_miss_1]}" "${RPS[mock_unique_1]}")× |"
    echo "| hits stored compressed ÷ stored as received, interleaved: client without zstd / client accepting zstd |" \
        "$(ratio "${COMPRESSION_SUMS[0]}" "${COMPRESSION_SUMS[2]}")× / $(ratio "${COMPRESSION_SUMS[1]}" "${COMPRESSION_SUMS[2]}")× |"
    if [[ -n ${RPS[ha_miss]:-} ]]; then
        peer_rows
        echo "| HA member miss req/s ÷ single-mode miss req/s, 1 connection | $(ratio "${RPS[ha_miss_1]}" "${RPS[relay_miss_1]}")× |"
        echo "| HA member miss req/s ÷ single-mode miss req/s, $CONNECTIONS connections | $(ratio "${RPS[ha_miss]}" "${RPS[relay_miss]}")× |"
        ha_cpu_row
        flight_rows
    fi
    open_loop_table
}

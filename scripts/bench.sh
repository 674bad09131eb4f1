#!/usr/bin/env bash
# `make bench`: relaycache against the mock upstream it fronts and against
# nginx's proxy_cache doing the same job, all on this machine's loopback.
#
#   hit path   the same request over and over: the mock answering directly
#              (the machine's limit), nginx cache hits, relaycache hits.
#   miss path  a different request every time, through relaycache and
#              straight to the mock, at 64 connections and at 1.
#   memory     a fresh relaycache filled with unique answers: RSS growth
#              per byte of answer stored.
#
# Prints a markdown table and writes it to bench-results/latest.md; the raw
# wrk output and server logs of the last run are in bench-results/logs/.
# Installs wrk and nginx with apt-get if they are missing.
#
# Environment (all optional):
#   BENCH_SECONDS         length of each measured run, in seconds (10)
#   BENCH_WARMUP_SECONDS  warm-up before each measured run (2)
#   BENCH_MEM_SECONDS     length of the run that fills the cache for the
#                         memory measurement (BENCH_SECONDS); the cache is
#                         capped at 1 GiB of answers, but relaycache's RSS
#                         may grow to about three times that
#   BENCH_THREADS         wrk threads (2)
#   BENCH_CONNECTIONS     wrk connections for the loaded runs (64)
#   BENCH_ANSWER_BYTES    answer text size of the mock upstream (5000)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="$ROOT/scripts/bench"
RESULTS_DIR="$ROOT/bench-results"
LOG_DIR="$RESULTS_DIR/logs"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
RELAY_BIN="$TARGET_DIR/release/relaycache"
MOCK_BIN="$TARGET_DIR/release/mock-upstream"

BENCH_SECONDS="${BENCH_SECONDS:-10}"
WARMUP_SECONDS="${BENCH_WARMUP_SECONDS:-2}"
MEM_SECONDS="${BENCH_MEM_SECONDS:-$BENCH_SECONDS}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
ANSWER_BYTES="${BENCH_ANSWER_BYTES:-5000}"

# The request every run sends: the template's @TAG@ is replaced by "fixed"
# for the hit path and by a per-request counter for the miss path.
BODY_TEMPLATE="$BENCH_DIR/request.json"
API_KEY="bench-key"

WORK=""           # temp dir: configs, nginx prefix and cache
PIDS=()           # background processes this script started
NGINX_PID_FILE="" # nginx daemonizes, so its pid comes from this file
USED_PORTS=" "    # ports handed out so far, so no two servers get the same
RUN_ID="$$-$RANDOM" # keeps unique bodies of this run apart from any earlier one

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- cleanup

# Stops one process: TERM, up to 5 s to exit, then KILL. Works for children
# and for nginx's master alike.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in {1..50}; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops one of our background processes and forgets it.
stop_child() {
    local pid=$1 kept=() p
    stop_pid "$pid"
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

stop_nginx() {
    if [[ -n $NGINX_PID_FILE && -s $NGINX_PID_FILE ]]; then
        stop_pid "$(<"$NGINX_PID_FILE")"
    fi
    NGINX_PID_FILE=""
}

# Runs on every exit, failed or not: nothing we started may outlive us.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    stop_nginx
    if ((rc != 0)); then
        # WORK is made right after the logs dir, so it says whether this run wrote logs.
        if [[ -n $WORK ]]; then log "failed (exit $rc); logs are in $LOG_DIR"; else log "failed (exit $rc)"; fi
    fi
    [[ -z $WORK ]] || rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

check_settings() {
    local name
    for name in BENCH_SECONDS WARMUP_SECONDS MEM_SECONDS THREADS CONNECTIONS ANSWER_BYTES; do
        [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive whole number, not '${!name}'"
    done
    ((CONNECTIONS >= THREADS)) || die "BENCH_CONNECTIONS must be at least BENCH_THREADS (wrk needs a connection per thread)"
    [[ -r /proc/self/status ]] || die "this benchmark reads /proc and needs Linux"
}

nginx_bin() {
    command -v nginx 2>/dev/null && return 0
    [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx && return 0
    return 1
}

# apt-get only what is missing, so a prepared machine never needs the network.
install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    nginx_bin >/dev/null || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]} with apt-get"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to install ${missing[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

build() {
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p relaycache -p mock-upstream)
    [[ -x $RELAY_BIN && -x $MOCK_BIN ]] || die "build did not produce $RELAY_BIN and $MOCK_BIN"
}

# Sets the variable named $1 to a loopback port nobody listens on. Ports come
# from below Linux's default ephemeral range (32768+), where wrk's own client
# sockets live. A port shows in /proc/net/tcp* as ":HEX " after an address.
# (Its locals have odd names so they cannot hide the caller's variable.)
free_port() {
    local fp_var=$1 fp_port fp_hex _
    for _ in {1..200}; do
        fp_port=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $fp_port "* ]] && continue
        fp_hex=$(printf '%04X' "$fp_port")
        if ! grep -qi ":$fp_hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            USED_PORTS+="$fp_port "
            printf -v "$fp_var" '%s' "$fp_port"
            return 0
        fi
    done
    die "no free loopback port found"
}

# render TEMPLATE OUT NAME=VALUE...: copies TEMPLATE to OUT with each @NAME@
# replaced, and refuses to leave a placeholder behind.
render() {
    local template=$1 out=$2 pair sed_args=()
    shift 2
    for pair in "$@"; do
        sed_args+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    sed "${sed_args[@]}" "$template" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then
        die "unreplaced placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | head -1)"
    fi
}

# wait_for_http NAME URL PID LOG: until URL answers HTTP at all. PID (may be
# empty) is checked so a server that died is reported at once with its log.
wait_for_http() {
    local name=$1 url=$2 pid=$3 logfile=$4 code _
    for _ in {1..100}; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code != 000 ]] && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited while starting (log: $logfile)"
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "$name did not answer $url within 10 s (log: $logfile)"
}

# ---------------------------------------------------------------- servers

start_mock() {
    free_port MOCK_PORT
    local logfile="$LOG_DIR/mock-upstream.log"
    "$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --answer-bytes "$ANSWER_BYTES" >"$logfile" 2>&1 &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    MOCK_URL="http://127.0.0.1:$MOCK_PORT/v1/messages"
    wait_for_http mock-upstream "http://127.0.0.1:$MOCK_PORT/v1/models" "$MOCK_PID" "$logfile"
    log "mock upstream on port $MOCK_PORT (pid $MOCK_PID)"
}

# start_relaycache NAME: a relaycache with an empty cache in front of the
# mock; sets RELAY_PID, RELAY_URL and RELAY_ADMIN.
start_relaycache() {
    local name=$1 port admin_port
    free_port port
    free_port admin_port
    local config="$WORK/$name.yaml" logfile="$LOG_DIR/$name.log"
    render "$BENCH_DIR/relaycache.yaml.template" "$config" \
        "PORT=$port" "ADMIN_PORT=$admin_port" "MOCK_PORT=$MOCK_PORT"
    "$RELAY_BIN" serve --config "$config" >"$logfile" 2>&1 &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    RELAY_URL="http://127.0.0.1:$port/v1/messages"
    RELAY_ADMIN="http://127.0.0.1:$admin_port"
    wait_for_http "$name" "$RELAY_ADMIN/healthz" "$RELAY_PID" "$logfile"
    wait_for_http "$name" "http://127.0.0.1:$port/" "$RELAY_PID" "$logfile"
    log "$name on port $port, admin $admin_port (pid $RELAY_PID)"
}

# nginx runs as a daemon with everything (config, pid, temp dirs, cache)
# under its own prefix in the temp dir; -e keeps even its startup log there.
start_nginx() {
    local port prefix="$WORK/nginx" user_line=""
    free_port port
    mkdir -p "$prefix"/{cache,client_body,proxy_temp,fastcgi_temp,uwsgi_temp,scgi_temp}
    # As root, nginx would switch its workers to "nobody", who cannot write
    # the cache in our (private) temp dir.
    ((EUID == 0)) && user_line="user root;"
    local conf="$prefix/nginx.conf" errlog="$LOG_DIR/nginx-error.log"
    render "$BENCH_DIR/nginx.conf.template" "$conf" \
        "PREFIX=$prefix" "PORT=$port" "MOCK_PORT=$MOCK_PORT" "ERROR_LOG=$errlog" "USER_LINE=$user_line"
    NGINX_PID_FILE="$prefix/nginx.pid"
    "$NGINX_BIN" -c "$conf" -p "$prefix/" -e "$errlog" -t -q || die "nginx rejected $conf"
    "$NGINX_BIN" -c "$conf" -p "$prefix/" -e "$errlog" || die "nginx did not start (log: $errlog)"
    NGINX_URL="http://127.0.0.1:$port/v1/messages"
    wait_for_http nginx "http://127.0.0.1:$port/v1/models" "" "$errlog"
    log "nginx on port $port (pid $(<"$NGINX_PID_FILE"))"
}

# ---------------------------------------------------------------- probes

# post_fixed URL HEADER: one POST of the fixed body; prints "STATUS VALUE"
# where VALUE is that response header ("-" if absent).
post_fixed() {
    local url=$1 header=$2 headers status value
    headers=$(curl -sS -o /dev/null -D - --max-time 10 -X POST \
        -H "x-api-key: $API_KEY" -H "anthropic-version: 2023-06-01" \
        -H "content-type: application/json" --data-binary "@$FIXED_BODY" "$url") ||
        die "POST $url failed"
    status=$(awk 'NR == 1 { print $2 }' <<<"$headers")
    value=$(awk -v h="$header" 'tolower($1) == tolower(h) ":" { sub(/\r$/, "", $2); print $2; exit }' <<<"$headers")
    echo "$status ${value:--}"
}

# expect_cached NAME URL HEADER HIT: the second identical request must be
# answered from cache; a benchmark of a cache that never hits is meaningless.
expect_cached() {
    local name=$1 url=$2 header=$3 hit=$4 first second
    first=$(post_fixed "$url" "$header")
    second=$(post_fixed "$url" "$header")
    if [[ ${second%% *} != 200 || ${second#* } != "$hit" ]]; then
        die "$name does not cache the request: first answer '$first', second '$second' (status and $header; want '200 $hit')"
    fi
    log "$name caches: first answer $first, second $second"
}

# Size of one answer as sent: its Content-Length.
answer_size() {
    local length
    length=$(curl -sS -o /dev/null -D - --max-time 10 -X POST \
        -H "x-api-key: $API_KEY" -H "anthropic-version: 2023-06-01" \
        -H "content-type: application/json" --data-binary "@$FIXED_BODY" "$MOCK_URL" |
        awk 'tolower($1) == "content-length:" { sub(/\r$/, "", $2); print $2; exit }')
    [[ $length =~ ^[0-9]+$ ]] || die "no Content-Length on the mock's answer"
    echo "$length"
}

# relay_stat NAME: one number from relaycache's /stats (flat JSON object).
relay_stat() {
    local json
    json=$(curl -fsS --max-time 5 "$RELAY_ADMIN/stats") || die "GET $RELAY_ADMIN/stats failed"
    sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$json"
}

vm_rss_kb() {
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

# ---------------------------------------------------------------- wrk

# run_wrk LOGNAME THREADS CONNS SECONDS SCRIPT URL ARGS...: one wrk run;
# prints the BENCH line of scripts/bench/common.lua's done().
run_wrk() {
    local name=$1 threads=$2 conns=$3 seconds=$4 script=$5 url=$6
    shift 6
    local logfile="$LOG_DIR/wrk-$name.log" line
    if ! wrk -t"$threads" -c"$conns" -d"${seconds}s" -s "$BENCH_DIR/$script.lua" "$url" -- "$@" >"$logfile" 2>&1; then
        cat "$logfile" >&2
        die "wrk failed ($name)"
    fi
    line=$(grep '^BENCH ' "$logfile" | tail -n 1) || die "wrk printed no result line ($name, see $logfile)"
    echo "$line"
}

# Results by row key.
declare -A LABEL CONNS REQS RPS P50 P99 NON2XX SOCKERR NOTE
ROWS=()
WRK_ARGS=()

# wrk_args SCRIPT RUN: sets WRK_ARGS to what SCRIPT.lua expects after "--".
# Each unique run gets its own tag, so no run repeats an earlier run's bodies
# (the warm-up would otherwise have stored the measured run's answers).
wrk_args() {
    if [[ $1 == fixed ]]; then
        WRK_ARGS=("$FIXED_BODY")
    else
        WRK_ARGS=("$BODY_TEMPLATE" "$RUN_ID-$2")
    fi
}

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# measure KEY LABEL THREADS CONNS SCRIPT URL [ADMIN]: a warm-up run, then
# the measured one. For relaycache rows (ADMIN given) /stats is read around
# the measured run to confirm it really hit or missed.
measure() {
    local key=$1 label=$2 threads=$3 conns=$4 script=$5 url=$6 admin=${7:-}
    local line hits0 misses0
    log "$label, $conns connection(s): warm-up ${WARMUP_SECONDS}s, then ${BENCH_SECONDS}s"
    wrk_args "$script" "$key-warmup"
    run_wrk "$key-warmup" "$threads" "$conns" "$WARMUP_SECONDS" "$script" "$url" "${WRK_ARGS[@]}" >/dev/null
    if [[ -n $admin ]]; then
        hits0=$(relay_stat hits)
        misses0=$(relay_stat misses)
    fi
    wrk_args "$script" "$key"
    line=$(run_wrk "$key" "$threads" "$conns" "$BENCH_SECONDS" "$script" "$url" "${WRK_ARGS[@]}")
    ROWS+=("$key")
    LABEL[$key]=$label
    CONNS[$key]=$conns
    REQS[$key]=$(field "$line" requests)
    RPS[$key]=$(field "$line" rps)
    P50[$key]=$(field "$line" p50_ms)
    P99[$key]=$(field "$line" p99_ms)
    NON2XX[$key]=$(field "$line" non2xx)
    SOCKERR[$key]=$(field "$line" socket_errors)
    if [[ -n $admin ]]; then
        NOTE[$key]="relaycache counted $(($(relay_stat hits) - hits0)) hits, $(($(relay_stat misses) - misses0)) misses"
    fi
    log "  ${RPS[$key]} req/s, p50 ${P50[$key]} ms, p99 ${P99[$key]} ms"
}

# The memory run: a fresh relaycache, its RSS before and after storing as
# many unique answers as wrk can push through in MEM_SECONDS.
measure_memory() {
    start_relaycache relaycache-memory
    # One miss and one hit first, so lazily built state (upstream connection
    # pool, runtime workers) is in the baseline, not counted as cache memory.
    expect_cached relaycache-memory "$RELAY_URL" x-relaycache-status hit
    local rss0 keys0 line
    keys0=$(relay_stat key_count)
    rss0=$(vm_rss_kb "$RELAY_PID")
    log "memory: filling a fresh relaycache with unique answers for ${MEM_SECONDS}s"
    wrk_args unique memory
    line=$(run_wrk memory-fill "$THREADS" "$CONNECTIONS" "$MEM_SECONDS" unique "$RELAY_URL" "${WRK_ARGS[@]}")
    MEM_REQUESTS=$(field "$line" requests)
    MEM_ERRORS=$(($(field "$line" non2xx) + $(field "$line" socket_errors)))
    MEM_KEYS=$(($(relay_stat key_count) - keys0))
    MEM_BYTES_USED=$(relay_stat bytes_used)
    MEM_EVICTIONS=$(relay_stat evictions)
    MEM_RSS_KB=$(($(vm_rss_kb "$RELAY_PID") - rss0))
    log "  $MEM_KEYS new keys, RSS +$MEM_RSS_KB KiB"
    stop_child "$RELAY_PID"
}

# ---------------------------------------------------------------- report

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
    echo
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
    echo "| relaycache hit p99 vs nginx hit p99 | ${P99[relay_hit]} ms vs ${P99[nginx_hit]} ms ($(ratio "${P99[relay_hit]}" "${P99[nginx_hit]}")×) |"
    echo "| relaycache hit req/s ÷ mock direct req/s | $(ratio "${RPS[relay_hit]}" "${RPS[mock_fixed]}")× |"
    echo "| miss path added p50, 1 connection | $(calc '%+.3f' 'a - b' "a=${P50[relay_miss_1]}" "b=${P50[mock_unique_1]}") ms" \
        "(${P50[mock_unique_1]} → ${P50[relay_miss_1]} ms) |"
    echo "| miss path added p50, $CONNECTIONS connections | $(calc '%+.3f' 'a - b' "a=${P50[relay_miss]}" "b=${P50[mock_unique]}") ms" \
        "(${P50[mock_unique]} → ${P50[relay_miss]} ms) |"
    echo "| memory: RSS growth ÷ (new keys × answer bytes) | $(calc '%.2f' 'rss * 1024 / (keys * size)' \
        "rss=$MEM_RSS_KB" "keys=$MEM_KEYS" "size=$ANSWER_SIZE") ($MEM_RSS_KB KiB for $MEM_KEYS answers of $ANSWER_SIZE bytes) |"
    echo "| memory: relaycache's own count, bytes_used ÷ key_count | $(calc '%.0f' 'used / keys' \
        "used=$MEM_BYTES_USED" "keys=$MEM_KEYS") bytes per entry |"
    echo
    echo "Checks:"
    echo
    for key in "${ROWS[@]}"; do
        [[ -z ${NOTE[$key]:-} ]] || echo "- ${LABEL[$key]}, ${CONNS[$key]} conn(s): ${NOTE[$key]} in ${REQS[$key]} requests"
    done
    echo "- memory run: $MEM_REQUESTS requests, $MEM_ERRORS errors, $MEM_EVICTIONS evictions" \
        "(evictions > 0 means the 1 GiB cache filled up and the ratio undercounts keys)"
    echo "- Errors counts wrk's \"Non-2xx or 3xx\" (answers with status ≥400) and socket errors (connect, read, write, timeout)."
}

# ---------------------------------------------------------------- main

main() {
    check_settings
    install_tools
    NGINX_BIN=$(nginx_bin) || die "nginx is not installed"
    build
    mkdir -p "$RESULTS_DIR"
    rm -rf "$LOG_DIR"
    mkdir -p "$LOG_DIR"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/relaycache-bench.XXXXXX")
    FIXED_BODY="$WORK/fixed.json"
    sed 's/@TAG@/fixed/' "$BODY_TEMPLATE" >"$FIXED_BODY"

    start_mock
    start_nginx
    start_relaycache relaycache
    expect_cached nginx "$NGINX_URL" x-cache-status HIT
    expect_cached relaycache "$RELAY_URL" x-relaycache-status hit
    ANSWER_SIZE=$(answer_size)

    # Hit path: one fixed request, served from cache (or by the mock itself).
    measure mock_fixed "mock direct, fixed body (machine limit)" "$THREADS" "$CONNECTIONS" fixed "$MOCK_URL"
    measure nginx_hit "nginx proxy_cache hits" "$THREADS" "$CONNECTIONS" fixed "$NGINX_URL"
    measure relay_hit "relaycache hits" "$THREADS" "$CONNECTIONS" fixed "$RELAY_URL" "$RELAY_ADMIN"
    # nginx is done; keep it from competing for the CPU.
    stop_nginx

    # Miss path: every body unique, so each request goes to the mock. The
    # 1-connection pair goes first: relaycache's misses get slower as its
    # cache grows, and the clean p50 comparison should see a near-empty one.
    measure mock_unique_1 "mock direct, unique bodies" 1 1 unique "$MOCK_URL"
    measure relay_miss_1 "relaycache misses, unique bodies" 1 1 unique "$RELAY_URL" "$RELAY_ADMIN"
    measure mock_unique "mock direct, unique bodies" "$THREADS" "$CONNECTIONS" unique "$MOCK_URL"
    measure relay_miss "relaycache misses, unique bodies" "$THREADS" "$CONNECTIONS" unique "$RELAY_URL" "$RELAY_ADMIN"
    # The memory run wants a fresh process; this one holds every miss above.
    stop_child "$RELAY_PID"

    measure_memory

    report | tee "$RESULTS_DIR/latest.md"
    log "written to $RESULTS_DIR/latest.md"
}

main "$@"

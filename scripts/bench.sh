#!/usr/bin/env bash
# `make bench`: relaycache against the mock upstream it fronts and against
# nginx's proxy_cache doing the same job, all on this machine's loopback.
#
#   hit path   the same request over and over: the mock answering directly
#              (the machine's limit), nginx cache hits, relaycache hits.
#   miss path  a different request every time, through relaycache and
#              straight to the mock, at 64 connections and at 1.
#   reserve    relaycache answering from its reserve tier (files on disk):
#              one process stores unique answers, a fresh one on the same
#              directory (empty memory) is sent the same requests again,
#              at 1 connection and at 64.
#   memory     a fresh relaycache filled with unique answers: RSS growth
#              per byte of answer stored.
#   cluster    a 3-member HA cluster (replica_count 2) and a client-mode
#              relaycache in front of it (what an injected sidecar runs):
#              the client's memory (L1) hits next to its peer (L2) hits,
#              at 1 connection; and misses through a member, paying for
#              replication, next to the single-mode misses above.
#   rolling    the hit ratio of a fixed working set read through a client
#              while each member in turn is stopped (SIGTERM: leave and hand
#              off) and started again, next to the same client's steady state.
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
#   BENCH_RESERVE_FILL    how many times as long as each replay the reserve
#                         is filled (5): reserve hits come two to three times
#                         as fast as the misses that store them (which slow
#                         down as the reserve grows), and the fill must
#                         cover every replayed request
#   BENCH_RESERVE_DIR     where the reserve's temp dir goes (TMPDIR or /tmp);
#                         it takes about 13 KB of disk per stored answer,
#                         about 3 GB at the defaults, and is removed after use
#   BENCH_ROLLING_KEYS    the working set of the rolling-restart measure:
#                         the first this many of the stored answers (500)
#   BENCH_PARTS           all (default); core: only the hit and miss rows;
#                         cluster: those and the cluster rows
#                         (mock direct, nginx, relaycache single mode)
#   BENCH_RELAY_BIN       benchmark this relaycache binary instead of
#                         building one (to compare two revisions side by
#                         side, each with the same mock and nginx)
#   BENCH_PEER_KEYS       answers stored in the cluster for the peer-hit row
#                         (5000); the client's 1 MiB memory holds about 170
#                         of them, so cycling over them reads from the peers
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="$ROOT/scripts/bench"
RESULTS_DIR="$ROOT/bench-results"
LOG_DIR="$RESULTS_DIR/logs"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
RELAY_BIN="${BENCH_RELAY_BIN:-$TARGET_DIR/release/relaycache}"
MOCK_BIN="$TARGET_DIR/release/mock-upstream"

BENCH_SECONDS="${BENCH_SECONDS:-10}"
WARMUP_SECONDS="${BENCH_WARMUP_SECONDS:-2}"
MEM_SECONDS="${BENCH_MEM_SECONDS:-$BENCH_SECONDS}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
ANSWER_BYTES="${BENCH_ANSWER_BYTES:-5000}"
RESERVE_FILL="${BENCH_RESERVE_FILL:-5}"
RESERVE_PARENT="${BENCH_RESERVE_DIR:-${TMPDIR:-/tmp}}"
PEER_KEYS="${BENCH_PEER_KEYS:-5000}"
ROLLING_KEYS="${BENCH_ROLLING_KEYS:-500}"
ROLLING_STEADY=() # hits, requests, errors of the steady working-set pass
ROLLING_DURING=() # the same, summed over the passes of the rolling restart
ROLLING_PEER_HITS=0

# The request every run sends: the template's @TAG@ is replaced by "fixed"
# for the hit path, by a per-request counter for the miss path, and in
# turn by RUN-1 .. RUN-BENCH_PEER_KEYS for the cluster's peer path.
BODY_TEMPLATE="$BENCH_DIR/request.json"
API_KEY="bench-key"

WORK=""           # temp dir: configs, nginx prefix and cache
RESERVE_DIR=""    # temp dir: the reserve tier's files (may be elsewhere, see BENCH_RESERVE_DIR)
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
    [[ -z $RESERVE_DIR ]] || rm -rf "$RESERVE_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

check_settings() {
    local name
    for name in BENCH_SECONDS WARMUP_SECONDS MEM_SECONDS THREADS CONNECTIONS ANSWER_BYTES RESERVE_FILL PEER_KEYS ROLLING_KEYS; do
        [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive whole number, not '${!name}'"
    done
    ((CONNECTIONS >= THREADS)) || die "BENCH_CONNECTIONS must be at least BENCH_THREADS (wrk needs a connection per thread)"
    ((ROLLING_KEYS <= PEER_KEYS)) || die "BENCH_ROLLING_KEYS ($ROLLING_KEYS) must not exceed BENCH_PEER_KEYS ($PEER_KEYS): the working set is part of the stored set"
    [[ -d $RESERVE_PARENT && -w $RESERVE_PARENT ]] || die "BENCH_RESERVE_DIR: '$RESERVE_PARENT' is not a writable directory"
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
    if [[ -n ${BENCH_RELAY_BIN:-} ]]; then
        # Another relaycache build is measured: only the mock is needed here.
        (cd "$ROOT" && cargo build --release -p mock-upstream)
    else
        (cd "$ROOT" && cargo build --release --workspace)
    fi
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

# start_relaycache NAME [RESERVE_DIR]: a relaycache with an empty memory
# cache in front of the mock, and RESERVE_DIR as its reserve tier if given
# (whatever the directory holds is what the reserve holds); sets RELAY_PID,
# RELAY_URL and RELAY_ADMIN.
start_relaycache() {
    local name=$1 reserve_url="" port admin_port
    if [[ -n ${2:-} ]]; then
        # Goes into a file:// URL (and through sed) as it is: no escaping.
        [[ $2 =~ ^/[A-Za-z0-9._/-]+$ ]] ||
            die "reserve directory '$2' must be an absolute path of letters, digits and ._/- (see BENCH_RESERVE_DIR)"
        reserve_url="file://$2"
    fi
    free_port port
    free_port admin_port
    local config="$WORK/$name.yaml"
    render "$BENCH_DIR/relaycache.yaml.template" "$config" \
        "PORT=$port" "ADMIN_PORT=$admin_port" "MOCK_PORT=$MOCK_PORT" "RESERVE_URL=$reserve_url"
    launch_relaycache "$name" "$config" "$port" "$admin_port"
}

# launch_relaycache NAME CONFIG PORT ADMIN_PORT: runs relaycache on CONFIG
# (which listens on PORT and ADMIN_PORT) until both listeners answer; sets
# RELAY_PID, RELAY_URL and RELAY_ADMIN.
launch_relaycache() {
    local name=$1 config=$2 port=$3 admin_port=$4 logfile="$LOG_DIR/$1.log"
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

# post_fixed URL HEADER [BODY_FILE]: one POST of the fixed body (or of
# BODY_FILE); prints "STATUS VALUE" where VALUE is that response header ("-"
# if absent).
post_fixed() {
    local url=$1 header=$2 body=${3:-$FIXED_BODY} headers status value
    headers=$(curl -sS -o /dev/null -D - --max-time 10 -X POST \
        -H "x-api-key: $API_KEY" -H "anthropic-version: 2023-06-01" \
        -H "content-type: application/json" --data-binary "@$body" "$url") ||
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

relay_stats() {
    curl -fsS --max-time 5 "$RELAY_ADMIN/stats" || die "GET $RELAY_ADMIN/stats failed"
}

# json_number JSON NAME: the number after "NAME": in JSON, written compactly
# as relaycache's /stats is. The last one, if the name repeats.
json_number() {
    local value
    value=$(sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1")
    [[ -n $value ]] || die "no number \"$2\" in relaycache's /stats: $1"
    echo "$value"
}

# relay_stat NAME: one top-level number from relaycache's /stats.
relay_stat() {
    local json
    json=$(relay_stats)
    json_number "$json" "$1"
}

# reserve_stat JSON NAME: one number from the "reserve" object of a /stats
# answer (cut out first: some of its names repeat top-level ones).
reserve_stat() {
    local json=${1#*\"reserve\":\{}
    json_number "${json%%\}*}" "$2"
}

# relay_counts: "HITS MISSES RESERVE_READS PEER_HITS" from one /stats
# answer, so the four belong together.
relay_counts() {
    local json hits misses reads peer
    json=$(relay_stats)
    hits=$(json_number "$json" hits)
    misses=$(json_number "$json" misses)
    reads=$(reserve_stat "$json" reads)
    peer=$(json_number "$json" peer_hits)
    echo "$hits $misses $reads $peer"
}

# cluster_stat JSON NAME: one number from the "cluster" object of a /stats
# answer.
cluster_stat() {
    local json=${1#*\"cluster\":\{}
    json_number "${json%%\}*}" "$2"
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
# relaycache's own counts over a measured run: hits (memory, reserve and
# peers), misses, the hits read from the reserve and those from peers.
declare -A HITS MISSES READS PEER_HITS
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

# ---------------------------------------------------------------- reserve

declare -A FILL_KEYS FILL_RPS # per fill tag: bodies each wrk thread made; req/s
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
    local tag=$1 seconds=$2 line
    log "reserve: storing answers to unique bodies ($tag) for ${seconds}s"
    wrk_args unique "$tag"
    line=$(run_wrk "$tag-fill" "$THREADS" "$CONNECTIONS" "$seconds" unique "$RELAY_URL" "${WRK_ARGS[@]}")
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

# ---------------------------------------------------------------- cluster

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
    measure ha_l1_hit_1 "relaycache client, memory (L1) hits" 1 1 fixed "$RELAY_URL" "$RELAY_ADMIN"
    measure ha_peer_hit_1 "relaycache client, peer (L2) hits" 1 1 cycle "$RELAY_URL" "$RELAY_ADMIN"
    check_peer_hits ha_peer_hit_1
    stop_child "$RELAY_PID"

    RELAY_ADMIN=${MEMBER_ADMINS[0]}
    local label="relaycache HA member misses, unique bodies (3 members, replica_count 2)"
    measure ha_miss_1 "$label" 1 1 unique "${MEMBER_URLS[0]}" "$RELAY_ADMIN"
    note_replication ha_miss_1
    measure ha_miss "$label" "$THREADS" "$CONNECTIONS" unique "${MEMBER_URLS[0]}" "$RELAY_ADMIN"
    note_replication ha_miss
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
    echo "| miss path added p50, 1 connection | $(calc '%+.3f' 'a - b' "a=${P50[relay_miss_1]}" "b=${P50[mock_unique_1]}") ms" \
        "(${P50[mock_unique_1]} → ${P50[relay_miss_1]} ms) |"
    echo "| miss path added p50, $CONNECTIONS connections | $(calc '%+.3f' 'a - b' "a=${P50[relay_miss]}" "b=${P50[mock_unique]}") ms" \
        "(${P50[mock_unique]} → ${P50[relay_miss]} ms) |"
    echo "| reserve hit p50 / p99 (1 connection) | ${P50[reserve_hit_1]} / ${P99[reserve_hit_1]} ms; $(reserve_target) |"
    echo "| reserve hit req/s ÷ relaycache miss req/s, $CONNECTIONS connections (both unique bodies) |" \
        "$(ratio "${RPS[reserve_hit]}" "${RPS[relay_miss]}")× |"
    echo "| peer (L2) hit vs memory (L1) hit, client, 1 connection: p50 / p99 | ${P50[ha_peer_hit_1]} / ${P99[ha_peer_hit_1]} ms" \
        "vs ${P50[ha_l1_hit_1]} / ${P99[ha_l1_hit_1]} ms; p50 $(ratio "${P50[ha_peer_hit_1]}" "${P50[ha_l1_hit_1]}")×; $(peer_target) |"
    echo "| HA member miss req/s ÷ single-mode miss req/s, 1 connection | $(ratio "${RPS[ha_miss_1]}" "${RPS[relay_miss_1]}")×" \
        "(p50 ${P50[relay_miss_1]} → ${P50[ha_miss_1]} ms) |"
    echo "| HA member miss req/s ÷ single-mode miss req/s, $CONNECTIONS connections | $(ratio "${RPS[ha_miss]}" "${RPS[relay_miss]}")×" \
        "(p50 ${P50[relay_miss]} → ${P50[ha_miss]} ms) |"
    flight_rows
    echo "| hit ratio during a rolling restart of the 3 members ÷ steady state (client, $ROLLING_KEYS stored answers) |" \
        "${ROLLING_DURING[0]}/${ROLLING_DURING[1]} during vs ${ROLLING_STEADY[0]}/${ROLLING_STEADY[1]} steady" \
        "($ROLLING_PEER_HITS answered by a peer): $(rolling_target) |"
    echo "| memory: RSS growth ÷ (new keys × answer bytes) | $(calc '%.2f' 'rss * 1024 / (keys * size)' \
        "rss=$MEM_RSS_KB" "keys=$MEM_KEYS" "size=$ANSWER_SIZE") ($MEM_RSS_KB KiB for $MEM_KEYS answers of $ANSWER_SIZE bytes) |"
    echo "| memory: relaycache's own count, bytes_used ÷ key_count | $(calc '%.0f' 'used / keys' \
        "used=$MEM_BYTES_USED" "keys=$MEM_KEYS") bytes per entry |"
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
    if [[ -n ${RPS[ha_miss]:-} ]]; then
        echo "| HA member miss req/s ÷ single-mode miss req/s, 1 connection | $(ratio "${RPS[ha_miss_1]}" "${RPS[relay_miss_1]}")× |"
        echo "| HA member miss req/s ÷ single-mode miss req/s, $CONNECTIONS connections | $(ratio "${RPS[ha_miss]}" "${RPS[relay_miss]}")× |"
        flight_rows
    fi
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
    if [[ ${BENCH_PARTS:-all} == core ]]; then
        report_core | tee "$RESULTS_DIR/latest-core.md"
        log "written to $RESULTS_DIR/latest-core.md"
        return
    fi

    # Cluster rows: three members and a client, with nothing else running.
    measure_cluster
    if [[ ${BENCH_PARTS:-all} == cluster ]]; then
        move_rows_after relay_miss_1 ha_miss_1
        move_rows_after relay_miss ha_miss
        report_core | tee "$RESULTS_DIR/latest-cluster.md"
        log "written to $RESULTS_DIR/latest-cluster.md"
        return
    fi

    # Reserve path: answers read back from files, by processes of its own.
    measure_reserve
    move_rows_after relay_hit reserve_hit_1 reserve_hit
    move_rows_after reserve_hit ha_l1_hit_1 ha_peer_hit_1
    move_rows_after relay_miss_1 ha_miss_1
    move_rows_after relay_miss ha_miss

    measure_memory

    report | tee "$RESULTS_DIR/latest.md"
    log "written to $RESULTS_DIR/latest.md"
}

main "$@"

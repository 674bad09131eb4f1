#!/usr/bin/env bash
# `make bench`: relaycache against the mock upstream it fronts and against
# nginx's proxy_cache doing the same job, all on this machine's loopback.
#
#   hit path   the same request over and over: the mock answering directly
#              (the machine's limit), nginx cache hits, relaycache hits.
#   open loop  nginx and relaycache hits at constant rates (vegeta): p50,
#              p99 and max latency when requests do not wait for answers.
#   miss path  a different request every time, through relaycache and
#              straight to the mock, at 64 connections and at 1.
#   reserve    relaycache answering from its reserve tier (files on disk):
#              one process stores unique answers, a fresh one on the same
#              directory (empty memory) is sent the same requests again,
#              at 1 connection and at 64.
#   compression  hits of compressed entries (zstd, the default) sent
#              decoded and sent as stored, next to hits of a relaycache
#              storing answers as received (codec none).
#   memory     a fresh relaycache filled with unique answers: RSS growth
#              per byte of answer stored, compressed and not.
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
#   BENCH_OPEN_RATES      the open-loop rows' rates, req/s ("2000 5000")
#   BENCH_HIT_ROUNDS      rounds of the interleaved comparison of nginx
#                         and relaycache hits at the default config, 5 s
#                         of each per round (4)
#   BENCH_COMPRESSION_ROUNDS  rounds of the interleaved compression
#                         comparison, 15 s each (4)
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
OPEN_RATES="${BENCH_OPEN_RATES:-2000 5000}"
HIT_ROUNDS="${BENCH_HIT_ROUNDS:-4}"
HIT_SUMS=(0 0) # interleaved hit requests: nginx, relaycache at the default config
HIT_CPU=(0 0 0 0) # the servers' CPU ticks in those rounds: nginx user, system; relaycache user, system
COMPRESSION_ROUNDS="${BENCH_COMPRESSION_ROUNDS:-4}"
COMPRESSION_SUMS=(0 0 0) # interleaved hit requests: decoded, as stored, uncompressed
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

# The parts, in the order they run; each file says what it holds.
for part in cleanup setup servers probes wrk openloop reserve cluster report; do
    # shellcheck source=/dev/null
    source "$BENCH_DIR/lib/$part.sh"
done

main() {
    check_settings
    install_tools
    install_vegeta
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
    measure_default_config
    measure_compression
    measure_open_loop

    # Miss path: every body unique, so each request goes to the mock, alone,
    # through nginx without a cache (what proxying alone costs here) and
    # through relaycache. The 1-connection rows go first: relaycache's
    # misses get slower as its cache grows, and the clean p50 comparison
    # should see a near-empty one. Each row counts the CPU of the mock and
    # of each proxy, beside wrk's own (see run_wrk).
    WATCHED=([mock]="$MOCK_PID" [nginx]="$(nginx_pids)" [relaycache]="$RELAY_PID")
    measure mock_unique_1 "mock direct, unique bodies" 1 1 unique "$MOCK_URL"
    measure nginx_pass_1 "nginx proxy_pass without a cache, unique bodies" 1 1 unique "$NGINX_PASS_URL"
    measure relay_miss_1 "relaycache misses, unique bodies" 1 1 unique "$RELAY_URL" "$RELAY_ADMIN"
    measure mock_unique "mock direct, unique bodies" "$THREADS" "$CONNECTIONS" unique "$MOCK_URL"
    measure nginx_pass "nginx proxy_pass without a cache, unique bodies" "$THREADS" "$CONNECTIONS" unique "$NGINX_PASS_URL"
    measure relay_miss "relaycache misses, unique bodies" "$THREADS" "$CONNECTIONS" unique "$RELAY_URL" "$RELAY_ADMIN"
    WATCHED=()
    # nginx is done; keep it from competing for the CPU.
    stop_nginx
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

    measure_memory none
    measure_memory

    report | tee "$RESULTS_DIR/latest.md"
    log "written to $RESULTS_DIR/latest.md"
}

main "$@"

# shellcheck shell=bash
# scripts/bench.sh, openloop: Open-loop rows with vegeta: requests sent at a
# constant rate whatever the server does, so queueing shows in the latency
# (a closed-loop tool such as wrk waits for each answer and hides it).
# Sourced by scripts/bench.sh; uses its settings and globals.

# The vegeta release the rows are measured with, built from its Go module.
VEGETA_MODULE="github.com/tsenart/vegeta/v12@v12.13.0"

# Results by row key: rate asked, rate achieved, latencies in ms, successes.
declare -A OPEN_LABEL OPEN_RATE OPEN_ACHIEVED OPEN_P50 OPEN_P99 OPEN_MAX OPEN_SUCCESS OPEN_INSIDE
OPEN_ROWS=()

# Puts vegeta on PATH, building it with go install when it is missing.
install_vegeta() {
    command -v vegeta >/dev/null && return 0
    local gobin
    gobin="$(go env GOPATH 2>/dev/null)/bin"
    if [[ -x $gobin/vegeta ]]; then
        PATH="$gobin:$PATH"
        return 0
    fi
    command -v go >/dev/null || die "vegeta is not installed and there is no Go toolchain to build it (install Go, or put vegeta on PATH)"
    log "building vegeta ($VEGETA_MODULE) with go install"
    GOFLAGS=-mod=mod go install "$VEGETA_MODULE" || die "go install $VEGETA_MODULE failed"
    PATH="$gobin:$PATH"
}

# open_targets URL: the fixed request as a vegeta target file.
open_targets() {
    local file="$WORK/vegeta-targets.txt"
    {
        echo "POST $1"
        echo "x-api-key: $API_KEY"
        echo "anthropic-version: 2023-06-01"
        echo "content-type: application/json"
        echo "@$FIXED_BODY"
    } >"$file"
    echo "$file"
}

# measure_open KEY LABEL RATE URL [SERVER_LOG]: a warm-up second, then
# BENCH_SECONDS at RATE requests a second, on as many connections as it
# takes. With SERVER_LOG, relaycache's request log: the latencies it
# measured itself for the requests of the row are read from it.
measure_open() {
    local key=$1 label=$2 rate=$3 url=$4 server_log=${5:-} targets logfile="$LOG_DIR/vegeta-$1.json" report
    local lines_before=0
    targets=$(open_targets "$url")
    log "$label at $rate req/s (open loop): ${BENCH_SECONDS}s"
    vegeta attack -targets="$targets" -rate="$rate/s" -duration=1s >/dev/null 2>&1 || true
    [[ -z $server_log ]] || lines_before=$(wc -l <"$server_log")
    vegeta attack -targets="$targets" -rate="$rate/s" -duration="${BENCH_SECONDS}s" -timeout=10s \
        | vegeta report -type=json >"$logfile" || die "vegeta failed ($key, see $logfile)"
    report=$(cat "$logfile")
    OPEN_ROWS+=("$key")
    OPEN_LABEL[$key]=$label
    OPEN_RATE[$key]=$rate
    OPEN_ACHIEVED[$key]=$(jq -r '.throughput | floor' <<<"$report")
    OPEN_P50[$key]=$(jq -r '.latencies["50th"] / 1e6 | . * 100 | round / 100' <<<"$report")
    OPEN_P99[$key]=$(jq -r '.latencies["99th"] / 1e6 | . * 100 | round / 100' <<<"$report")
    OPEN_MAX[$key]=$(jq -r '.latencies.max / 1e6 | . * 100 | round / 100' <<<"$report")
    OPEN_SUCCESS[$key]=$(jq -r '.success * 100 | . * 100 | round / 100' <<<"$report")
    log "  p50 ${OPEN_P50[$key]} ms, p99 ${OPEN_P99[$key]} ms, max ${OPEN_MAX[$key]} ms, ${OPEN_SUCCESS[$key]}% answered"
    if [[ -n $server_log ]]; then
        # The request log is written off the request path: let it catch up.
        sleep 1
        OPEN_INSIDE[$key]=$(tail -n "+$((lines_before + 1))" "$server_log" | handler_latencies)
        log "  inside relaycache (its request log): ${OPEN_INSIDE[$key]}"
    fi
}

# handler_latencies: reads request-log lines on stdin and prints the p50,
# p99 and max of their latency_ms (from the request's arrival at the
# handler to its last byte written), as "p50 / p99 / max (N lines)".
handler_latencies() {
    grep -a -o 'latency_ms=[0-9.e-]*' | cut -d= -f2 | sort -g |
        awk '{ v[NR] = $1 }
             END {
                 if (NR == 0) { print "no request lines"; exit }
                 p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]
                 p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1]
                 printf "%.3f / %.3f / %.2f ms (%d lines)\n", p50, p99, v[NR], NR
             }'
}

# The open-loop rows: nginx and relaycache hits at each of BENCH_OPEN_RATES,
# relaycache at its default config (request log on, level info), so that
# its own measure of each request's time can be set beside the client's:
# the difference is time spent outside relaycache's handler (the kernel,
# waiting to be scheduled, the load generator itself).
measure_open_loop() {
    local rate pid=$RELAY_PID url=$RELAY_URL admin=$RELAY_ADMIN
    start_relaycache relaycache-open-loop "" info
    expect_cached relaycache-open-loop "$RELAY_URL" x-relaycache-status hit
    for rate in $OPEN_RATES; do
        measure_open "nginx_open_$rate" "nginx proxy_cache hits" "$rate" "$NGINX_URL"
        measure_open "relay_open_$rate" "relaycache hits, default config" "$rate" "$RELAY_URL" \
            "$LOG_DIR/relaycache-open-loop.log"
    done
    stop_child "$RELAY_PID"
    RELAY_PID=$pid RELAY_URL=$url RELAY_ADMIN=$admin
}

open_loop_table() {
    ((${#OPEN_ROWS[@]} > 0)) || return 0
    echo
    echo "Open loop (vegeta, constant rate, ${BENCH_SECONDS} s per row):"
    echo
    echo "| Configuration | Rate asked | Rate served | p50 ms | p99 ms | max ms | Answered | inside relaycache: p50 / p99 / max |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    local key
    for key in "${OPEN_ROWS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s%% | %s |\n' "${OPEN_LABEL[$key]}" "${OPEN_RATE[$key]}" \
            "${OPEN_ACHIEVED[$key]}" "${OPEN_P50[$key]}" "${OPEN_P99[$key]}" "${OPEN_MAX[$key]}" "${OPEN_SUCCESS[$key]}" \
            "${OPEN_INSIDE[$key]:-–}"
    done
    echo
    echo "Inside relaycache: the latency_ms of its request log for the row's requests, from the request's arrival at the handler to its last byte handed to the connection; the rest of the client's figure is the kernel, scheduling and the load generator."
}

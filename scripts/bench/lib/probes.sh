# shellcheck shell=bash
# scripts/bench.sh, probes: Single requests and readings: a cached answer, /stats, RSS.
# Sourced by scripts/bench.sh; uses its settings and globals.
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

# cpu_ticks PID...: the user and the system CPU time the processes have
# used so far, each summed over its threads, in clock ticks: "USER SYS".
cpu_ticks() {
    local pid
    for pid in "$@"; do
        # utime and stime are fields 14 and 15 of /proc/PID/stat; the
        # command name before them is in parentheses and may hold spaces.
        # A process that has ended counts nothing (nginx's cache loader
        # exits a minute after start).
        sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12, $13 }'
    done | awk '{ user += $1; sys += $2 } END { print user + 0, sys + 0 }'
}

# context_switches PID...: the context switches the processes' threads
# have made so far (voluntary and not), summed: each is a sleep and a wake
# of a thread, which a VM pays for with an exit to its hypervisor.
context_switches() {
    local pid
    for pid in "$@"; do
        cat "/proc/$pid/task/"*/status 2>/dev/null
    done | awk '$1 ~ /ctxt_switches:$/ { n += $2 } END { print n + 0 }'
}

# process_work PID...: "USER SYS SWITCHES" so far (see cpu_ticks and
# context_switches).
process_work() {
    echo "$(cpu_ticks "$@") $(context_switches "$@")"
}

# nginx_pids: nginx's master process and its workers.
nginx_pids() {
    local master
    master=$(<"$NGINX_PID_FILE")
    echo "$master" $(pgrep -P "$master")
}

# shellcheck shell=bash
# scripts/bench.sh, setup: Settings checks, tools, the build, ports, config templates, waiting for servers.
# Sourced by scripts/bench.sh; uses its settings and globals.
check_settings() {
    local name
    for name in BENCH_SECONDS WARMUP_SECONDS MEM_SECONDS THREADS CONNECTIONS ANSWER_BYTES RESERVE_FILL PEER_KEYS ROLLING_KEYS HIT_ROUNDS COMPRESSION_ROUNDS; do
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
    command -v jq >/dev/null || missing+=(jq)
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

# shellcheck shell=bash
# scripts/bench.sh, servers: Starting the mock upstream, relaycache and nginx.
# Sourced by scripts/bench.sh; uses its settings and globals.
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

# start_relaycache NAME [RESERVE_DIR [LOG_LEVEL [CODEC]]]: a relaycache
# with an empty memory cache in front of the mock, and RESERVE_DIR as its
# reserve tier if not empty (whatever the directory holds is what the
# reserve holds), logging at LOG_LEVEL (warn), storing answers with
# cache.compression.codec CODEC (zstd); sets RELAY_PID, RELAY_URL and
# RELAY_ADMIN.
start_relaycache() {
    local name=$1 reserve_url="" port admin_port log_level=${3:-warn} codec=${4:-zstd}
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
        "PORT=$port" "ADMIN_PORT=$admin_port" "MOCK_PORT=$MOCK_PORT" "RESERVE_URL=$reserve_url" \
        "LOG_LEVEL=$log_level" "CODEC=$codec"
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
    local port pass_port prefix="$WORK/nginx" user_line=""
    free_port port
    free_port pass_port
    mkdir -p "$prefix"/{cache,client_body,proxy_temp,fastcgi_temp,uwsgi_temp,scgi_temp}
    # As root, nginx would switch its workers to "nobody", who cannot write
    # the cache in our (private) temp dir.
    ((EUID == 0)) && user_line="user root;"
    local conf="$prefix/nginx.conf" errlog="$LOG_DIR/nginx-error.log"
    render "$BENCH_DIR/nginx.conf.template" "$conf" \
        "PREFIX=$prefix" "PORT=$port" "PASS_PORT=$pass_port" "MOCK_PORT=$MOCK_PORT" "ERROR_LOG=$errlog" "USER_LINE=$user_line"
    NGINX_PID_FILE="$prefix/nginx.pid"
    "$NGINX_BIN" -c "$conf" -p "$prefix/" -e "$errlog" -t -q || die "nginx rejected $conf"
    "$NGINX_BIN" -c "$conf" -p "$prefix/" -e "$errlog" || die "nginx did not start (log: $errlog)"
    NGINX_URL="http://127.0.0.1:$port/v1/messages"
    NGINX_PASS_URL="http://127.0.0.1:$pass_port/v1/messages"
    wait_for_http nginx "http://127.0.0.1:$port/v1/models" "" "$errlog"
    log "nginx on port $port (pid $(<"$NGINX_PID_FILE"))"
}

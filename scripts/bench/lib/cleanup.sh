# shellcheck shell=bash
# scripts/bench.sh, cleanup: Stopping what the benchmark started, on every exit path.
# Sourced by scripts/bench.sh; uses its settings and globals.
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

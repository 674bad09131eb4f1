#!/usr/bin/env bash
# Offline demo: starts the mock upstream and relaycache (examples/demo.yaml),
# sends the same question twice and shows the second answer coming from
# memory. Leaves both running until Ctrl-C so you can try your own requests.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release

"$bin/mock-upstream" --listen 127.0.0.1:8080 &
mock_pid=$!
"$bin/relaycache" serve --config examples/demo.yaml &
relay_pid=$!
trap 'kill "$relay_pid" "$mock_pid" 2>/dev/null; wait 2>/dev/null' EXIT

for _ in $(seq 50); do
  curl -fsS -o /dev/null http://127.0.0.1:9787/readyz 2>/dev/null && break
  sleep 0.1
done

ask() {
  curl -sS -o /dev/null -w 'HTTP %{http_code} in %{time_total}s\n' -D - http://127.0.0.1:8787/v1/messages \
    -H 'x-api-key: demo-key' -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
    -d '{"model":"claude-demo","max_tokens":64,"messages":[{"role":"user","content":"Hello, cache"}]}' \
    | grep -i -E '^(x-relaycache-(status|tier)|HTTP [0-9]+ in)' | tr -d '\r' | tr '\n' ' '
  echo
}
echo "first ask:  $(ask)"
echo "second ask: $(ask)"
echo
curl -sS http://127.0.0.1:9787/stats; echo
echo
echo "relaycache on http://127.0.0.1:8787 (admin 127.0.0.1:9787) in front of the mock; Ctrl-C stops both."
wait "$relay_pid"

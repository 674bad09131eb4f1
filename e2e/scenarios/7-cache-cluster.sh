# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 7: the cache itself, from the example RelayCache as it is (no
# tokenSecret). The operator generates the members' and the clients' token
# Secrets (owned by the RelayCache; no token in the ConfigMap or the
# StatefulSet). The pods it creates are fake under kwok, so three real
# `relaycache` processes are started here from the config the operator
# rendered into the ConfigMap, with its peer names mapped to loopback ports
# (e2e/lib/loopback-config.py; everything else as rendered) and both tokens
# read from the generated Secrets through the apiserver, as the pods get
# them. The members authenticate each other (each sees 3 members). The
# upstream is the mock (mock-upstream), which counts the calls it answers:
# one request through member 0 is a miss, the same request through members 1
# and 2 is a hit, and the mock saw exactly one call. Two clients as an
# injected sidecar runs them: with the clients' token the same request is a
# hit from the cluster; with a wrong token member 0 refuses it (counted in
# relaycache_cluster_refused_total{reason="token"}).

# post_message MEMBER: POST the same Messages request through a member,
# print its x-relaycache-status.
post_message() {
  local http_port="$1" headers="$tmp/member-reply-headers.txt"
  curl -fsS -o /dev/null -D "$headers" "http://127.0.0.1:$http_port/v1/messages" \
    -H 'x-api-key: e2e-key' -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
    --data '{"model":"claude-test","max_tokens":64,"messages":[{"role":"user","content":"e2e: is the cluster shared?"}]}'
  tr -d '\r' <"$headers" | awk -F': ' 'tolower($1) == "x-relaycache-status" { print $2 }'
}

# stats_true ADMIN-PORT JQ-FILTER: the member's /stats satisfies the filter.
stats_true() {
  [[ "$(curl -fsS "http://127.0.0.1:$1/stats" | jq -r "$2")" == true ]]
}

scenario_7() {
  new_namespace "$ns_cluster"
  apply_example "$ns_cluster"
  until_true "ConfigMap $ns_cluster/$rc_name rendered" kubectl get configmap "$rc_name" -n "$ns_cluster"
  rendered_config "$ns_cluster" >"$tmp/rendered.yaml"
  [[ "$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["cache"]["mode"])' \
    "$tmp/rendered.yaml")" == ha ]] || fail "the rendered config is not mode ha"
  local member_token client_token
  until_true "Secret $ns_cluster/$rc_name-member-token generated" \
    kubectl get secret "$rc_name-member-token" -n "$ns_cluster"
  until_true "Secret $ns_cluster/$rc_name-client-token generated" \
    kubectl get secret "$rc_name-client-token" -n "$ns_cluster"
  member_token="$(token_of "$ns_cluster" "$rc_name-member-token")"
  client_token="$(token_of "$ns_cluster" "$rc_name-client-token")"
  [[ "$member_token" =~ ^[0-9a-f]{64}$ && "$client_token" =~ ^[0-9a-f]{64}$ ]] \
    || fail "the generated tokens are not 32 bytes as hex"
  [[ "$member_token" != "$client_token" ]] || fail "the members' and the clients' token are the same"
  local secret
  for secret in "$rc_name-member-token" "$rc_name-client-token"; do
    get_json "$tmp/$secret.json" secret "$secret" -n "$ns_cluster"
    jq_true "$tmp/$secret.json" '[.metadata.ownerReferences[]? | select(.kind == "RelayCache"
        and .name == $name and .controller == true)] | length == 1' --arg name "$rc_name" \
      || fail "Secret $secret is not owned by the RelayCache"
  done
  log "  ok: both token Secrets generated, owned by the RelayCache, two different tokens"
  until_true "StatefulSet $ns_cluster/$rc_name applied" kubectl get statefulset "$rc_name" -n "$ns_cluster"
  local children
  children="$(kubectl get configmap,statefulset "$rc_name" -n "$ns_cluster" -o json)"
  if grep -qF -e "$member_token" -e "$client_token" <<<"$children"; then
    fail "a token is a literal in the ConfigMap or the StatefulSet"
  fi
  expect_eq "StatefulSet token references" "$(jq -c '.items[] | select(.kind == "StatefulSet")
      | [.spec.template.spec.containers[0].env[] | select(.valueFrom.secretKeyRef)
         | [.name, .valueFrom.secretKeyRef.name]]' <<<"$children")" \
    "[[\"RELAYCACHE_PEER_TOKEN\",\"$rc_name-member-token\"],[\"RELAYCACHE_CLIENT_TOKEN\",\"$rc_name-client-token\"]]"

  local mock_port=""
  free_port mock_port
  "$RUST_BIN_DIR/mock-upstream" --listen "127.0.0.1:$mock_port" >"$tmp/mock-upstream.log" 2>&1 &
  local mock_pid=$!
  track_pid "$mock_pid"
  # Waiting on its log line, not on a request: the mock counts every request
  # it serves, GETs included, and the count below must be the POSTs alone.
  wait_for "mock upstream" "$mock_pid" grep -q "listening on" "$tmp/mock-upstream.log"

  local i grpc http admin members=() http_ports=() admin_ports=() member_pids=()
  for i in 0 1 2; do
    grpc="" http="" admin=""
    free_port grpc
    free_port http
    free_port admin
    members+=("$i:$grpc:$http:$admin")
    http_ports+=("$http")
    admin_ports+=("$admin")
  done
  local client_http="" client_admin="" rogue_http="" rogue_admin=""
  free_port client_http
  free_port client_admin
  free_port rogue_http
  free_port rogue_admin
  mkdir -p "$tmp/members"
  python3 "$e2e_dir/lib/loopback-config.py" "$tmp/rendered.yaml" "$tmp/members" \
    "http://127.0.0.1:$mock_port" "${members[@]}" \
    "client:app:$client_http:$client_admin" "client:rogue:$rogue_http:$rogue_admin"
  for i in 0 1 2; do
    RELAYCACHE_PEER_TOKEN="$member_token" RELAYCACHE_CLIENT_TOKEN="$client_token" \
      POD_NAME="$rc_name-$i" POD_NAMESPACE="$ns_cluster" \
      "$RUST_BIN_DIR/relaycache" serve --config "$tmp/members/member-$i.yaml" \
      >"$tmp/relaycache-$i.log" 2>&1 &
    member_pids+=($!)
    track_pid "$!"
  done
  local all_members
  all_members="$(IFS=,; echo "${member_pids[*]}")"
  for i in 0 1 2; do
    wait_for "member $i sees 3 cluster members" "$all_members" \
      stats_true "${admin_ports[i]}" '.cluster.members == 3'
  done

  expect_eq "through member 0" "$(post_message "${http_ports[0]}")" miss
  wait_for "member 0 stored the answer in the cluster" "$all_members" \
    stats_true "${admin_ports[0]}" '.cluster.writes >= 1'
  expect_eq "through member 1" "$(post_message "${http_ports[1]}")" hit
  expect_eq "through member 2" "$(post_message "${http_ports[2]}")" hit
  # /__mock/stats reports the requests before itself: here, the one POST.
  expect_eq "calls the mock upstream answered" \
    "$(curl -fsS "http://127.0.0.1:$mock_port/__mock/stats" | jq -r .calls)" 1

  # A client as the injected sidecar runs it: the clients' token, no
  # members' token in its environment or its config.
  RELAYCACHE_CLIENT_TOKEN="$client_token" \
    "$RUST_BIN_DIR/relaycache" serve --config "$tmp/members/client-app.yaml" \
    >"$tmp/relaycache-client-app.log" 2>&1 &
  track_pid "$!"
  local app_pid=$!
  wait_for "the client learns the 3 members" "$app_pid" \
    stats_true "$client_admin" '.cluster.members == 3'
  expect_eq "through a client holding the clients' token" "$(post_message "$client_http")" hit

  # The same with a wrong token: member 0 refuses it, and counts why.
  refused_by_token() {
    curl -fsS "http://127.0.0.1:${admin_ports[0]}/metrics" \
      | awk '/^relaycache_cluster_refused_total\{.*reason="token".*\}/ { if ($NF + 0 >= 1) found = 1 } END { exit !found }'
  }
  ! refused_by_token || fail "member 0 counted token refusals before any wrong token was sent"
  RELAYCACHE_CLIENT_TOKEN="not-the-clients-token" \
    "$RUST_BIN_DIR/relaycache" serve --config "$tmp/members/client-rogue.yaml" \
    >"$tmp/relaycache-client-rogue.log" 2>&1 &
  track_pid "$!"
  local rogue_pid=$!
  wait_for "member 0 refuses the wrong token (relaycache_cluster_refused_total{reason=\"token\"})" \
    "$rogue_pid,$all_members" refused_by_token
  # A client listens once it has found the members, or after one
  # failure-detection window without them (with a warning): this one only
  # after the window.
  wait_for "the client with a wrong token listens (after the window)" "$rogue_pid" \
    stats_true "$rogue_admin" 'has("cluster")'
  stats_true "$rogue_admin" '.cluster.members == 0' \
    || fail "the client with a wrong token learned members: $(curl -fsS "http://127.0.0.1:$rogue_admin/stats" | jq -c .cluster)"
  log "  ok: a wrong clients' token is refused and learns no member"

  # No token in any log: the operator's, the members', the clients'.
  if grep -lF -e "$member_token" -e "$client_token" "$tmp"/relaycache-*.log; then
    fail "a token appears in the logs above"
  fi
  log "  ok: no token in the operator's or the processes' logs"
}

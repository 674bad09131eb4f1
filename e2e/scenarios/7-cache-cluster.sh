# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 7: the cache itself. The pods the operator creates are fake under
# kwok, so three real `relaycache` processes are started here from the
# config the operator rendered into the ConfigMap, with its peer names mapped
# to loopback ports (e2e/lib/loopback-config.py; everything else as
# rendered) and the peer token from the Secret, as the pods get it. The
# upstream is the mock (mock-upstream), which counts the calls it answers:
# one request through member 0 is a miss, the same request through members 1
# and 2 is a hit, and the mock saw exactly one call.

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
  mkdir -p "$tmp/members"
  python3 "$e2e_dir/lib/loopback-config.py" "$tmp/rendered.yaml" "$tmp/members" \
    "http://127.0.0.1:$mock_port" "${members[@]}"
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
}

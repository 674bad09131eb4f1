# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from the runner; functions called through wait_for; jq and sh variables
# The real-pod scenarios (sourced by e2e/run-real-pods.sh). Every pod runs
# an image of e2e/build-images.sh on the node of lib/node.sh; the test
# reaches pods only through the apiserver (kubectl) or, for numbers the
# product exposes (/stats, the mock's call count), at their pod IPs from
# the node's host.

chart="$repo_root/charts/relaycache-operator"
release=relaycache-operator
ns_system=relaycache-e2e-system
ns_cluster=relaycache-e2e-cluster
ns_reserve=relaycache-e2e-reserve
rc_name=llm-cache
example="$repo_root/examples/relaycache.yaml"
mock_url="http://mock-upstream.$ns_cluster.svc:8080"
client_image="relaycache/e2e-client:$image_version"
# Answers the reader of R4 keeps asking for, and the bar per step.
RP_WORKING_SET="${RP_WORKING_SET:-200}"
RP_HIT_BAR="${RP_HIT_BAR:-95}"

helm() { "$BIN_DIR/helm" --kubeconfig "$kubeconfig" "$@"; }
fail() { die "$*"; }
until_true() { local what="$1"; shift; wait_for "$what" - "$@"; }
expect_eq() {
  [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
  log "  ok: $1 = $3"
}
new_namespace() {
  kubectl create namespace "$1" >&2
  kubectl label namespace "$1" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >&2
}

# rp_pod_logs: what the pods of the test namespaces say, after a failure.
rp_pod_logs() {
  local ns pod
  for ns in "$ns_system" "$ns_cluster" "$ns_reserve"; do
    kubectl get pods -n "$ns" -o wide >&2 2>/dev/null || continue
    for pod in $(kubectl get pods -n "$ns" -o name 2>/dev/null); do
      log "---- $ns/$pod ----"
      kubectl logs -n "$ns" "$pod" --all-containers --tail 15 >&2 2>/dev/null || true
      kubectl get -n "$ns" "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.name}: {.state}{"\n"}{end}' >&2 2>/dev/null || true
    done
  done
}

# A pod spec fragment that passes Pod Security "restricted".
restricted_pod='securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}'
restricted_container='securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}'

# pod_ip NS SELECTOR: the IP of the first Ready pod the selector matches.
pod_ip() {
  kubectl get pods -n "$1" -l "$2" -o json | jq -r '[.items[] | select(.metadata.deletionTimestamp == null)
    | select(any(.status.conditions[]?; .type == "Ready" and .status == "True")) | .status.podIP] | first // empty'
}

# member_ips NS: the Ready members' pod IPs, one a line.
member_ips() {
  kubectl get pods -n "$1" -l "app.kubernetes.io/instance=$rc_name" -o json | jq -r '.items[]
    | select(.metadata.deletionTimestamp == null)
    | select(any(.status.conditions[]?; .type == "Ready" and .status == "True")) | .status.podIP'
}

# ready_members NS N: N members Ready, the StatefulSet settled at N.
ready_members() {
  local sts
  sts="$(kubectl get statefulset "$rc_name" -n "$1" -o json)" || return 1
  jq -e --argjson n "$2" '.status.readyReplicas == $n and .status.replicas == $n
    and .status.updatedReplicas == $n and .status.currentRevision == .status.updateRevision
    and .metadata.generation == .status.observedGeneration' <<<"$sts" >/dev/null
}

# members_see NS N: every Ready member reports N cluster members.
members_see() {
  local ip count=0
  for ip in $(member_ips "$1"); do
    [[ "$(curl -fsS "http://$ip:9787/stats" | jq -r .cluster.members)" == "$2" ]] || return 1
    count=$((count + 1))
  done
  ((count == $2))
}

# container_pid NS POD CONTAINER: the host PID of the container's process
# (containerd's task for the container ID the pod's status names).
container_pid() {
  local id
  id="$(kubectl get pod "$2" -n "$1" -o json | jq -r --arg c "$3" '.status.containerStatuses[]
    | select(.name == $c) | .containerID // empty')"
  [[ -n "$id" ]] || return 0
  ctr --address "$node_sock" -n k8s.io tasks ls | awk -v id="${id#containerd://}" '$1 == id && $3 == "RUNNING" { print $2 }'
}

mock_calls() {
  curl -fsS "http://$(pod_ip "$ns_cluster" app=mock-upstream):8080/__mock/stats" | jq -r .calls
}

# ---------------------------------------------------------------------------
scenario_R1() {
  new_namespace "$ns_system"
  helm install "$release" "$chart" -n "$ns_system" >"$tmp/helm-install.txt" 2>&1 \
    || fail "helm install failed: $(cat "$tmp/helm-install.txt")"
  log "  helm install $release: deployed (no value overridden)"
  local deploy
  deploy="$(kubectl get deployments -n "$ns_system" \
    -l app.kubernetes.io/instance="$release",app.kubernetes.io/component=operator -o name)"
  [[ "$deploy" == deployment.apps/* ]] || fail "no operator Deployment from the chart"
  until_true "operator Deployment available" \
    kubectl rollout status "$deploy" -n "$ns_system" --timeout 5s
  local lease
  lease="$(kubectl get "$deploy" -n "$ns_system" -o json | jq -r '.spec.template.spec.containers[]
    | select(.name == "operator") | .env[] | select(.name == "LEASE_NAME") | .value')"
  lease_held_by_a_pod() {
    local holder
    holder="$(kubectl get lease "$lease" -n "$ns_system" -o jsonpath='{.spec.holderIdentity}')"
    [[ -n "$holder" ]] && kubectl get pod "$holder" -n "$ns_system" >/dev/null
  }
  until_true "Lease $ns_system/$lease held by an operator pod" lease_held_by_a_pod
  log "  ok: Lease held by pod $(kubectl get lease "$lease" -n "$ns_system" -o jsonpath='{.spec.holderIdentity}')"
  local wh
  wh="$(kubectl get mutatingwebhookconfigurations -o json | jq -r --arg ns "$ns_system" '.items[]
    | select(.webhooks[0].clientConfig.service.namespace == $ns) | .metadata.name')"
  [[ -n "$wh" ]] || fail "no MutatingWebhookConfiguration pointing at a Service in $ns_system"
  state_set webhook_configuration "$wh"
  ca_bundle() {
    [[ -n "$(kubectl get mutatingwebhookconfiguration "$wh" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]
  }
  until_true "caBundle patched by the operator pod" ca_bundle
}

# ---------------------------------------------------------------------------
mock_manifest() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: mock-upstream}
spec:
  replicas: 1
  selector: {matchLabels: {app: mock-upstream}}
  template:
    metadata: {labels: {app: mock-upstream}}
    spec:
      terminationGracePeriodSeconds: 1
      $restricted_pod
      containers:
      - name: mock
        image: relaycache/mock-upstream:$image_version
        args: ["--listen", "0.0.0.0:8080"]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
        $restricted_container
---
apiVersion: v1
kind: Service
metadata: {name: mock-upstream}
spec:
  selector: {app: mock-upstream}
  ports: [{port: 8080, targetPort: 8080}]
EOF
}

scenario_R2() {
  new_namespace "$ns_cluster"
  mock_manifest | kubectl apply -n "$ns_cluster" -f - >&2
  until_true "mock-upstream Deployment available" \
    kubectl rollout status deployment/mock-upstream -n "$ns_cluster" --timeout 5s
  sed "s#https://api.anthropic.com#$mock_url#" "$example" >"$tmp/relaycache.yaml"
  grep -q "$mock_url" "$tmp/relaycache.yaml" || fail "the example has no anthropic upstream to point at the mock"
  kubectl apply -f "$tmp/relaycache.yaml" -n "$ns_cluster" >&2
  until_true "3 members Ready through their probes" ready_members "$ns_cluster" 3
  # What runs, read on the node: the member's process and its root mount.
  local pid
  pid="$(container_pid "$ns_cluster" "$rc_name-0" relaycache)"
  [[ -n "$pid" ]] || fail "no running task for $rc_name-0's relaycache container in containerd"
  expect_eq "member 0's process: user id" "$(awk '$1 == "Uid:" { print $2 }' "/proc/$pid/status")" 65532
  expect_eq "member 0's process: root filesystem" \
    "$(awk '$5 == "/" { o = $6 } END { split(o, a, ","); print a[1] }' "/proc/$pid/mountinfo")" ro
  until_true "every member sees 3 members (peer names through CoreDNS)" members_see "$ns_cluster" 3
  expect_eq "the RelayCache's readyReplicas" \
    "$(kubectl get relaycache "$rc_name" -n "$ns_cluster" -o jsonpath='{.status.readyReplicas}')" 3
}

# client_pod_spec NAME INDENT: a pod spec (restricted) with one container
# NAME of the client image running `/bin/sh -c` on a script that starts
# with the function `ask URL KEY QUESTION SECONDS`: it POSTs QUESTION to
# URL/v1/messages and prints "STATUS TIER" (empty when no answer came). The
# caller goes on with the script's lines, indented by INDENT + 4. Lines
# after the first are indented by INDENT spaces, for a YAML block.
client_pod_spec() {
  local pad
  pad="$(printf '%*s' "$2" '')"
  {
    cat <<EOF
terminationGracePeriodSeconds: 1
$restricted_pod
containers:
- name: $1
  image: $client_image
  $restricted_container
  command:
  - /bin/sh
  - -c
  - |
EOF
    sed 's/^/    /' <<'EOF'
ask() {
  timeout "$4" wget -q -S -O /dev/null --header "x-api-key: $2" \
    --header 'anthropic-version: 2023-06-01' --header 'content-type: application/json' \
    --post-data "{\"model\":\"claude-test\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\",\"content\":\"$3\"}]}" \
    "$1/v1/messages" 2>&1 | tr -d '\r' \
    | awk 'tolower($1) == "x-relaycache-status:" { s = $2 } tolower($1) == "x-relaycache-tier:" { t = $2 } END { print s, t }'
}
EOF
  } | sed "2,\$s/^/$pad/"
}

# app_deployment NAME: an app labelled for injection; its container POSTs the
# same question twice to $ANTHROPIC_BASE_URL and prints RESULT lines.
app_deployment() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: $1}}
  template:
    metadata:
      labels: {app: $1, relaycache.io/inject: $rc_name}
    spec:
      $(client_pod_spec app 6)
          echo "ANTHROPIC_BASE_URL=\$ANTHROPIC_BASE_URL"
          # Asks at once, as an app does: no answer (the sidecar does not
          # listen yet) is asked again a second later.
          n=1
          while [ \$n -le 2 ]; do
            set -- \$(ask "\$ANTHROPIC_BASE_URL" e2e-key 'real pods: is the cluster shared?' 20)
            if [ -n "\${1:-}" ]; then echo "RESULT \$n status=\$1 tier=\${2:-}"; n=\$((n + 1)); else sleep 1; fi
          done
          exec sleep 3600
EOF
}

# app_results NAME: the RESULT lines of app NAME (two when it is done).
app_results() {
  kubectl logs -n "$ns_cluster" "deployment/$1" -c app 2>/dev/null | grep '^RESULT' || true
}
app_done() { [[ "$(app_results "$1" | wc -l)" -ge 2 ]]; }

scenario_R3() {
  app_deployment app-a | kubectl apply -n "$ns_cluster" -f - >&2
  until_true "app-a printed two answers" app_done app-a
  local pod
  pod="$(kubectl get pods -n "$ns_cluster" -l app=app-a -o name | head -n1)"
  kubectl get -n "$ns_cluster" "$pod" -o json >"$tmp/app-a.json"
  expect_eq "app-a's injected native sidecar" \
    "$(jq -r '[.spec.initContainers[]? | select(.name == "relaycache") | .restartPolicy] | first // "none"' "$tmp/app-a.json")" Always
  app_results app-a | sed 's/^/  app-a: /' >&2
  expect_eq "app-a, first answer" "$(app_results app-a | awk '$2 == 1 { print $3 }')" status=miss
  expect_eq "app-a, second answer" "$(app_results app-a | awk '$2 == 2 { print $3 }')" status=hit

  app_deployment app-b | kubectl apply -n "$ns_cluster" -f - >&2
  until_true "app-b printed two answers" app_done app-b
  app_results app-b | sed 's/^/  app-b: /' >&2
  local app
  for app in app-a app-b; do
    kubectl logs -n "$ns_cluster" "deployment/$app" -c relaycache 2>&1 | grep -v '"request"\| request ' | tail -n 12 | sed "s/^/  $app sidecar: /" >&2 || true
  done
  expect_eq "app-b, first answer" "$(app_results app-b | awk '$2 == 1 { print $3, $4 }')" "status=hit tier=peer"
  # The mock is new in R2 and nobody else calls it; /__mock/stats counts
  # the requests before itself (GETs too), so this is the POSTs alone.
  expect_eq "calls the mock upstream answered for both apps" "$(mock_calls)" 1
}

# ---------------------------------------------------------------------------
# The reader: a pod (no sidecar) asking the members' Service for answers
# 1..N in a loop; one line per request: R <epoch> <pass> <i> <status>.
reader_pod() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: reader, labels: {app: reader}}
spec:
  $(client_pod_spec reader 2)
      pass=0
      while :; do
        pass=\$((pass + 1)); i=1
        while [ \$i -le $RP_WORKING_SET ]; do
          s=\$(ask "http://$rc_name.$ns_cluster.svc:8787" e2e-reader "working set \$i" 10 | cut -d' ' -f1)
          echo "R \$(date +%s) \$pass \$i \${s:-error}"
          i=\$((i + 1))
        done
      done
EOF
}

reader_lines() { kubectl logs -n "$ns_cluster" reader -c reader 2>/dev/null | grep '^R ' || true; }
reader_passed() { reader_lines | awk -v p="$1" -v n="$RP_WORKING_SET" '$3 == p && $4 == n { f = 1 } END { exit !f }'; }

# ratio FROM TO: "hits/total pct" of the reader's answers between two
# epochs, pass 1 (which fills the working set) left out.
ratio() {
  reader_lines | awk -v a="$1" -v b="$2" '$3 >= 2 && $2 >= a && $2 <= b { t++; n[$5]++ }
    END { if (t == 0) { print "0/0 0"; exit }
          other = ""; for (k in n) if (k != "hit") other = other " " k "=" n[k]
          printf "%d/%d %.1f%s\n", n["hit"], t, 100 * n["hit"] / t, other }'
}

# step NAME SETTLE-COMMAND... : after the caller's action, wait for the
# command, read on for RP_SETTLE_SECONDS more, and record the ratio since
# the step began ($step_start).
RP_SETTLE_SECONDS="${RP_SETTLE_SECONDS:-10}"
record_step() {
  local name="$1"; shift
  until_true "$name settled" "$@"
  sleep "$RP_SETTLE_SECONDS"
  local r
  r="$(ratio "$step_start" "$(date +%s)")"
  printf '%-24s %s  (%ss)\n' "$name" "$r" "$(( $(date +%s) - step_start ))" >>"$tmp/hit-ratios.txt"
  log "  hit ratio during $name: $r"
  awk -v bar="$RP_HIT_BAR" '{ exit !($2 >= bar) }' <<<"$r" || step_failed+=("$name ($r)")
}

rollout_done() {
  kubectl rollout status statefulset/"$rc_name" -n "$ns_cluster" --timeout 5s >/dev/null && ready_members "$ns_cluster" "$1"
}

scenario_R4() {
  reader_pod | kubectl apply -n "$ns_cluster" -f - >&2
  until_true "the reader filled the working set (pass 1)" reader_passed 1
  local pass1
  pass1="$(reader_lines | awk '$3 == 1 && $5 == "miss" { n++ } END { print n + 0 }')"
  log "  pass 1: $pass1 of $RP_WORKING_SET answers were misses"
  step_failed=()
  step_start="$(date +%s)"
  record_step "steady state" reader_passed 3
  step_start="$(date +%s)"
  kubectl scale relaycache/"$rc_name" -n "$ns_cluster" --replicas 5 >&2
  record_step "scale to 5" ready_members "$ns_cluster" 5
  step_start="$(date +%s)"
  kubectl scale relaycache/"$rc_name" -n "$ns_cluster" --replicas 2 >&2
  record_step "scale to 2" ready_members "$ns_cluster" 2
  step_start="$(date +%s)"
  local uid
  uid="$(kubectl get pod "$rc_name-0" -n "$ns_cluster" -o jsonpath='{.metadata.uid}')"
  kubectl delete pod "$rc_name-0" -n "$ns_cluster" --wait=false >&2
  new_member_0() {
    [[ "$(kubectl get pod "$rc_name-0" -n "$ns_cluster" -o jsonpath='{.metadata.uid}')" != "$uid" ]] \
      && ready_members "$ns_cluster" 2
  }
  record_step "delete $rc_name-0" new_member_0
  step_start="$(date +%s)"
  kubectl rollout restart statefulset/"$rc_name" -n "$ns_cluster" >&2
  sleep 2
  record_step "rollout restart" rollout_done 2
  ((${#step_failed[@]} == 0)) || fail "hit ratio below ${RP_HIT_BAR}% during: ${step_failed[*]}"
}

# ---------------------------------------------------------------------------
scenario_R5() {
  local port=""
  free_port port
  moto_server -H "$NODE_IP" -p "$port" >"$tmp/moto.log" 2>&1 &
  track_pid $!
  wait_for "moto on $NODE_IP:$port" "$!" curl -fsS "http://$NODE_IP:$port/"
  curl -fsS -X PUT "http://$NODE_IP:$port/e2e-reserve" >/dev/null
  new_namespace "$ns_reserve"
  kubectl create secret generic reserve-credentials -n "$ns_reserve" \
    --from-literal AWS_ACCESS_KEY_ID=e2e --from-literal AWS_SECRET_ACCESS_KEY=e2e-secret >&2
  kubectl apply -n "$ns_reserve" -f - >&2 <<EOF
apiVersion: relaycache.io/v1alpha1
kind: RelayCache
metadata: {name: $rc_name}
spec:
  replicas: 2
  mode: ha
  upstreams:
  - {name: anthropic, url: "$mock_url", paths: ["/v1/messages"]}
  cache: {ttl: 1h, memory: 64Mi, isolation: credential, streaming: false}
  reserve:
    url: s3://e2e-reserve/cache
    # The Secret's keys reach the members as environment variables, which
    # the reserve reads (AWS_* for s3://), as users pass credentials.
    credentialsSecret: {name: reserve-credentials}
    options:
      aws_endpoint: "http://$NODE_IP:$port"
      aws_region: us-east-1
      aws_allow_http: "true"
EOF
  until_true "2 reserve members Ready" ready_members "$ns_reserve" 2
  until_true "both members see 2 members" members_see "$ns_reserve" 2
  local ip
  ip="$(member_ips "$ns_reserve" | head -n1)"
  expect_eq "first read" "$(post_at "$ip" | cut -d' ' -f1)" miss
  reserve_written() { curl -fsS "http://$NODE_IP:$port/e2e-reserve?list-type=2" | grep -q '<Key>'; }
  until_true "the answer is in the reserve bucket" reserve_written
  local uids
  uids="$(kubectl get pods -n "$ns_reserve" -l "app.kubernetes.io/instance=$rc_name" -o jsonpath='{.items[*].metadata.uid}')"
  kubectl delete pods -n "$ns_reserve" -l "app.kubernetes.io/instance=$rc_name" --wait=false >&2
  all_new() {
    local now
    now="$(kubectl get pods -n "$ns_reserve" -l "app.kubernetes.io/instance=$rc_name" -o jsonpath='{.items[*].metadata.uid}')"
    local u
    for u in $now; do [[ " $uids " != *" $u "* ]] || return 1; done
    ready_members "$ns_reserve" 2
  }
  until_true "every member pod replaced and Ready" all_new
  ip="$(member_ips "$ns_reserve" | head -n1)"
  # Ready only after the warm start, which read the entry into its memory
  # from the reserve, or from the other new member that read it there
  # first: the first read is a memory hit.
  expect_eq "entries a new member warmed from the reserve or its peer" \
    "$(curl -fsS "http://$ip:9787/stats" | jq -r '.cluster.warmed_from_reserve + .cluster.warmed_from_members')" 1
  expect_eq "first read through a new member" "$(post_at "$ip")" "hit memory"
}

# post_at IP: POST the reserve question to a member at its pod IP; prints
# "status tier".
post_at() {
  local headers="$tmp/reserve-headers.txt"
  curl -fsS -o /dev/null -D "$headers" "http://$1:8787/v1/messages" \
    -H 'x-api-key: e2e-key' -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
    --data '{"model":"claude-test","max_tokens":64,"messages":[{"role":"user","content":"real pods: does the reserve outlive the pods?"}]}'
  tr -d '\r' <"$headers" | awk -F': ' 'tolower($1) == "x-relaycache-status" { s = $2 } tolower($1) == "x-relaycache-tier" { t = $2 }
    END { print s, t }' | sed 's/ $//'
}

state_file="$tmp/state.sh"
: >"$state_file"
state_set() { printf '%s=%q\n' "$1" "$2" >>"$state_file"; }

# shellcheck shell=bash
# The scenario runner both suites use (run-scenarios.sh, run-real-pods.sh).
# Source it after control-plane.sh, with E2E_SKIP set; then
#
#   scenario N TITLE [NEEDS...]   run scenario_N in a subshell: PASS or
#                                 FAIL; SKIPPED when N is in E2E_SKIP;
#                                 NOT RUN when a scenario it needs did not
#                                 pass. After a FAIL it calls
#                                 scenario_failed N, which the runner may
#                                 define (logs to print).
#   scenarios_finish WHAT         the summary (and scenarios_summary_extra,
#                                 if defined); dies when any scenario
#                                 failed or did not run.

# A skip left in CI's environment would pass the run with scenarios unproven.
if [[ -n "${CI:-}" && -n "${E2E_SKIP// /}" && "${E2E_ALLOW_SKIP:-0}" != 1 ]]; then
  die "E2E_SKIP=$E2E_SKIP is set under CI; unset it (or set E2E_ALLOW_SKIP=1 to skip on purpose)"
fi

skip_list=" $(tr ',' ' ' <<<"$E2E_SKIP") "
declare -A outcome=()
summary=()

scenario() {
  local n="$1" title="$2" need rc start
  shift 2
  if [[ "$skip_list" == *" $n "* ]]; then
    outcome[$n]=SKIPPED
    log "SKIPPED  scenario $n: $title (E2E_SKIP=$E2E_SKIP)"
    summary+=("SKIPPED  $n  $title (E2E_SKIP)")
    return 0
  fi
  for need in "$@"; do
    if [[ "${outcome[$need]:-}" != PASS ]]; then
      outcome[$n]="NOT RUN"
      log "NOT RUN  scenario $n: $title (scenario $need: ${outcome[$need]:-not run})"
      summary+=("NOT RUN  $n  $title (needs $need)")
      return 0
    fi
  done
  log "---- scenario $n: $title ----"
  start=$SECONDS
  set +e
  (set -e; "scenario_$n")
  rc=$?
  set -e
  if ((rc == 0)); then
    outcome[$n]=PASS
    log "PASS     scenario $n: $title ($((SECONDS - start))s)"
    summary+=("PASS     $n  $title ($((SECONDS - start))s)")
  else
    outcome[$n]=FAIL
    log "FAIL     scenario $n: $title ($((SECONDS - start))s)"
    summary+=("FAIL     $n  $title")
    if declare -F scenario_failed >/dev/null; then scenario_failed "$n" || true; fi
  fi
}

scenarios_finish() {
  local what="$1" line n failed=0
  log "================================================================"
  for line in "${summary[@]}"; do log "$line"; done
  if declare -F scenarios_summary_extra >/dev/null; then scenarios_summary_extra; fi
  log "================================================================"
  for n in "${!outcome[@]}"; do
    case "${outcome[$n]}" in FAIL|"NOT RUN") failed=1 ;; esac
  done
  ((failed == 0)) || die "$what failed after ${SECONDS}s"
  log "OK: $what done in ${SECONDS}s"
}

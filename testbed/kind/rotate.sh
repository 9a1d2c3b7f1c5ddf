#!/usr/bin/env bash
# Key rotation under load on the kind testbed: while an object is fetched
# through the edges every 0.5 s and a live stream is published at the origin,
# annotate the DcdnCluster with dcdn.io/rotate-keys and follow
# .status.rotationPhase until it is back to Idle with a new active key. Then
# assert, from every pod's /metrics, that no chunk was rejected
# (dcdn_chunks_rejected_total did not move), that no fetch failed and that
# a reader following the live stream at the edges missed no chunk.
#
#   testbed/kind/rotate.sh          # ROTATE_TIMEOUT=1200 (seconds) by default
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_testbed
setup_tmp
timeout_s="${ROTATE_TIMEOUT:-1200}"
wait_ready 2m || die "DcdnCluster $DCDN is not Ready; rotate a healthy cluster"
[ "$(phase)" = Idle ] || [ -z "$(phase)" ] || die "a rotation is already in progress ($(phase))"

rejections >"$TMP/before"
old_key="$(active_key)"

say "load: an object fetched through the edges, a live stream published"
name="rotate-$(date +%s)-$$"
random_file "$TMP/object" $((2 * 1024 * 1024))
publish "$TMP/object" "$name" || die "publishing $name failed"
set_target "$TMP/target" "$name" "$TMP/object"
fetch_loop "$TMP/target" "$TMP/fetches" &
BG_PIDS+=("$!")
stream="rotate-live-$(date +%s)-$$"
port_forward "pod/$DCDN-origin-0" 8080 || die "no port-forward to the origin"
token="$(ingest_token)"
(
  while [ ! -e "$TMP/stop" ]; do
    head -c 16384 /dev/urandom
    sleep 0.25
  done | curl -fsS -T - -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$PF_PORT/v1/streams/$stream" >"$TMP/live.out" 2>&1
  echo $? >"$TMP/live.rc"
) &
BG_PIDS+=("$!")
live_pid=$!
live_follow "$stream" "$TMP/live" &
BG_PIDS+=("$!")
follow_pid=$!
sleep 5

say "rotating: kubectl annotate dcdn/$DCDN dcdn.io/rotate-keys=..."
t0=$(date +%s)
k annotate dcdn "$DCDN" "dcdn.io/rotate-keys=$t0" --overwrite >/dev/null
last=""
started=0
while :; do
  p="$(phase)"
  if [ "$p" != "$last" ]; then
    printf '     %4d s  %s\n' $(($(date +%s) - t0)) "${p:-<none>}"
    last="$p"
  fi
  [ -n "$p" ] && [ "$p" != Idle ] && started=1
  new_key="$(active_key)"
  if [ "$started" = 1 ] && [ "$p" = Idle ] && [ "$new_key" != "$old_key" ]; then break; fi
  # A rotation fast enough to be missed between polls still changes the key.
  if [ "$p" = Idle ] && [ -n "$new_key" ] && [ "$new_key" != "$old_key" ]; then break; fi
  if [ $(($(date +%s) - t0)) -gt "$timeout_s" ]; then
    fail "rotation did not finish in $timeout_s s (phase ${p:-<none>})"
    break
  fi
  sleep 2
done
t1=$(date +%s)
[ "$new_key" != "$old_key" ] && pass "rotation finished in $((t1 - t0)) s: key ${old_key:-<none>} -> $new_key"
sleep 5

say "stopping the load"
touch "$TMP/stop"
wait "$live_pid" "$follow_pid" 2>/dev/null || true
stop_port_forward
if [ "$(cat "$TMP/live.rc" 2>/dev/null)" = 0 ]; then
  pass "live stream $stream published throughout"
else
  fail "live publish failed: $(cat "$TMP/live.out" 2>/dev/null)"
fi

ok="$(count ok "$TMP/fetches")"
bad="$(count fail "$TMP/fetches")"
if [ "$bad" -eq 0 ] && [ "$ok" -gt 0 ]; then
  pass "$ok object fetches through the edges during the rotation, all identical"
else
  fail "$bad of $((ok + bad)) object fetches failed or differed during the rotation"
fi

ok="$(count ok "$TMP/live")"
bad="$(count fail "$TMP/live")"
if [ "$bad" -eq 0 ] && [ "$ok" -gt 0 ]; then
  pass "$ok live chunks followed at the edges as they came, none missing"
else
  fail "$bad of $((ok + bad)) live chunks missing at the edges"
fi

rejections >"$TMP/after"
# Per pod: rejections now minus before; a pod that restarted counts from 0.
read -r total notes < <(awk '
  NR == FNR { r[$1] = $2; n[$1] = $3; next }
  { d = ($1 in r && r[$1] == $2 && n[$1] != "unreachable") ? $3 - n[$1] : $3
    if ($3 == "unreachable") { note = note " " $1 ":unreachable"; d = 0 }
    else if (!($1 in r) || r[$1] != $2) note = note " " $1 ":new-or-restarted"
    t += d }
  END { printf "%d%s\n", t, note }' "$TMP/before" "$TMP/after")
if [ "$total" -eq 0 ] && [[ "$notes" != *unreachable* ]]; then
  pass "zero chunks rejected on $(wc -l <"$TMP/after") pods (dcdn_chunks_rejected_total)${notes:+; note:$notes}"
else
  fail "$total chunks rejected during the rotation${notes:+ (${notes# })}"
fi
finish

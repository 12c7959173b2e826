#!/usr/bin/env bash
# make demo-local: dnspulse without Kubernetes, in one minute. Three CoreDNS replicas with
# pulse on loopback addresses, the healer in static mode probing each one and reading its
# heartbeat, a steady stream of client queries; then one replica's process is frozen
# (SIGSTOP: "up" but serving nothing) and the timeline shows the healer's verdict and its
# remediation (here: restart that replica), while its peers are left alone.
# DEMO_WAIT=0 ends after the story instead of waiting for Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-_output/bin}
DEMO_WAIT=${DEMO_WAIT:-1}
work=$(mktemp -d /tmp/dnspulse-demo.XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  [[ -n "${KEEP:-}" ]] && cp -r "$work" "$KEEP"
  for f in "$work"/*.pid; do [[ -f "$f" ]] && kill -CONT "$(cat "$f")" 2>/dev/null && kill "$(cat "$f")" 2>/dev/null; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  echo "demo: cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s  %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
port=1053
start_replica() { # $1 = name, $2 = address
  cat > "$work/$1.Corefile" <<CF
.:$port {
    bind $2
    pulse $2:9155 {
        replica $1
        tick 50ms
    }
    cache 5
    template IN A demo.test {
        answer "{{ .Name }} 30 IN A 192.0.2.10"
    }
}
CF
  "$BIN/coredns" -conf "$work/$1.Corefile" -quiet >"$work/$1.log" 2>&1 &
  echo $! > "$work/$1.pid"
  disown # the remediation kills it; that is the story, not a shell notice
}
# The remediation the healer runs (static mode appends the replica's name): restart it.
cat > "$work/restart.sh" <<SH
#!/usr/bin/env bash
name=\$1; pid=\$(cat "$work/\$name.pid")
kill -CONT "\$pid" 2>/dev/null; kill -KILL "\$pid" 2>/dev/null
"$BIN/coredns" -conf "$work/\$name.Corefile" -quiet >>"$work/\$name.log" 2>&1 &
echo \$! > "$work/\$name.pid"
echo "restarted \$name as pid \$!"
SH
chmod +x "$work/restart.sh"

declare -A addr=([replica-1]=127.0.0.11 [replica-2]=127.0.0.12 [replica-3]=127.0.0.13)
say "starting 3 CoreDNS replicas with pulse (127.0.0.11-13:$port, heartbeat on :9155)"
targets=()
for r in replica-1 replica-2 replica-3; do
  start_replica "$r" "${addr[$r]}"
  targets+=(--target "$r=${addr[$r]}:$port@${addr[$r]}:9155")
done
for r in replica-1 replica-2 replica-3; do
  for _ in $(seq 1 200); do curl -fs "http://${addr[$r]}:9155/pulse" >/dev/null 2>&1 && break; sleep 0.05; done
done

say "starting the healer (static mode; remediation: restart the replica)"
"$BIN/healer" "${targets[@]}" --check demo.test/A --audit-log "$work/audit.log" \
  --metrics-addr 127.0.0.1:9156 --remediate-exec "$work/restart.sh" --cooldown 30s --global-cooldown 10s --warm-up 3s \
  >"$work/healer.log" 2>&1 &
pids+=($!)

say "client load: 300 queries/s spread over the three replicas (dnsperf)"
echo "demo.test A" > "$work/queries"
for r in replica-1 replica-2 replica-3; do
  if command -v dnsperf >/dev/null; then
    dnsperf -s "${addr[$r]}" -p $port -d "$work/queries" -Q 100 -l 40 -t 1 >"$work/dnsperf-$r.log" 2>&1 &
    pids+=($!)
  fi
done

cat > "$work/hb.py" <<'PY'
import json, sys
h = json.load(sys.stdin)
w = h["windows"]["1s"]
probe = "ok" if h["selfProbe"]["ok"] else "FAIL"
print("%-10s seq=%-5d verdict=%-8s 1s: %4d q  p99=%dus  servfail=%.2f  selfProbe=%s" % (
    h["replica"], h["seq"], h["verdict"], w["queries"], w["latencyMicros"]["p99"], w["servfailRatio"], probe))
PY
heartbeat() { # one line per replica from GET /pulse
  curl -fs --max-time 0.5 "http://$1:9155/pulse" | python3 "$work/hb.py" 2>/dev/null || echo "$1  (no heartbeat)"
}
sleep 2
say "heartbeats (GET /pulse):"
for r in replica-1 replica-2 replica-3; do echo "           $(heartbeat "${addr[$r]}")"; done
until grep -q '"to":"healthy"' "$work/audit.log" 2>/dev/null; do sleep 0.1; done
say "the healer sees all three healthy"

victim=replica-2
say "FAULT: freezing $victim (SIGSTOP): the process exists, its port is open, it answers nothing"
fault_ns=$(date +%s%N)
kill -STOP "$(cat "$work/$victim.pid")"

printed=0
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
  mapfile -t lines < <(tail -n +$((printed + 1)) "$work/audit.log")
  for l in "${lines[@]}"; do
    printed=$((printed + 1))
    python3 - "$fault_ns" "$l" <<'PY'
import json, sys, datetime
fault = int(sys.argv[1]); e = json.loads(sys.argv[2])
t = e["time"]; ts = datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
dt = (ts - fault / 1e9) * 1000
if dt < 0:
    sys.exit()  # the story starts at the fault
what = {"state": lambda: f'{e["replica"]}: {e["from"]} -> {e["to"]}  ({"; ".join(e.get("reasons") or [])})',
        "remediation": lambda: f'{e["replica"]}: remediation {e["action"]} -> {e["result"]} {e.get("message","")}'}.get(e["event"], lambda: json.dumps(e))()
print(f"{t[11:23]}  +{dt:7.0f} ms  {what}")
PY
  done
  if grep -q '"event":"remediation".*"result":"success"' "$work/audit.log" 2>/dev/null; then break; fi
  sleep 0.1
done
for _ in $(seq 1 100); do curl -fs "http://${addr[$victim]}:9155/pulse" >/dev/null 2>&1 && break; sleep 0.05; done
sleep 1
say "after the remediation (GET /pulse):"
for r in replica-1 replica-2 replica-3; do echo "           $(heartbeat "${addr[$r]}")"; done
say "healer metrics: curl -s 127.0.0.1:9156/metrics | grep dnspulse_healer_   audit log: $work/audit.log"
if [[ "$DEMO_WAIT" == "1" ]]; then
  say "everything stays up until Ctrl-C (try: curl -s 127.0.0.11:9155/pulse; kill -STOP \$(cat $work/replica-1.pid))"
  tail -f "$work/audit.log" &
  pids+=($!)
  wait "${pids[0]}"
fi

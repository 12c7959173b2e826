#!/usr/bin/env bash
# What serving heartbeat streams (GET /pulse?watch=1) costs pulse (make bench-watch): the
# real custom CoreDNS with pulse ticking every TICK, N watchers (curl, each reading its
# stream to /dev/null) for N in WATCHERS, rounds interleaved; CPU seconds of the CoreDNS
# process (utime+stime from /proc) over SECONDS_PER_RUN, divided by the ticks in that time
# (seq's growth). The cost of N watchers per tick is the median, over rounds, of the figure
# with N minus the same round's with none (which is the ticker, the janitor and the
# self-probe).
# Results go to stdout and _output/bench/watch.tsv; copy the table into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-_output/bench}
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
TICK=${TICK:-10ms}
WATCHERS=${WATCHERS:-0 1 2 10}
COREDNS=${COREDNS_BIN:-_output/bin/coredns}
mkdir -p "$OUT"
command -v curl >/dev/null || { echo "curl missing: apt-get install -y curl" >&2; exit 1; }
[[ -x "$COREDNS" ]] || { echo "$COREDNS missing: make build-coredns" >&2; exit 1; }

work=$(mktemp -d)
pid=""
watchers=()
stop_watchers() { for w in "${watchers[@]}"; do kill "$w" 2>/dev/null || true; done; for w in "${watchers[@]}"; do wait "$w" 2>/dev/null || true; done; watchers=(); }
cleanup() { stop_watchers; [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$((20000 + RANDOM % 20000)); pport=$((port + 1))
cat > "$work/Corefile" <<CF
.:$port {
    bind 127.0.0.1
    pulse 127.0.0.1:$pport {
        tick $TICK
        watchers 16
    }
    whoami
}
CF
"$COREDNS" -conf "$work/Corefile" -quiet > "$work/coredns.log" 2>&1 &
pid=$!
url="http://127.0.0.1:$pport/pulse"
for _ in $(seq 1 200); do curl -sf "$url" >/dev/null && break; sleep 0.05; done
seq_now() { curl -sf "$url" | sed -E 's/.*"seq":([0-9]+).*/\1/'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

results="$OUT/watch.tsv"
echo -e "watchers\tround\tcpu_s\tticks\tcpu_us_per_tick" > "$results"
echo "== CoreDNS CPU per tick with N heartbeat streams: tick $TICK, $ROUNDS rounds x ${SECONDS_PER_RUN}s, N in $WATCHERS, interleaved"
for round in $(seq 1 "$ROUNDS"); do
  for n in $WATCHERS; do
    for _ in $(seq 1 "$n"); do curl -sN "$url?watch=1" > /dev/null & watchers+=($!); done
    sleep 1 # let the streams connect before measuring
    s0=$(seq_now); c0=$(cpu_ticks)
    sleep "$SECONDS_PER_RUN"
    s1=$(seq_now); c1=$(cpu_ticks)
    stop_watchers
    awk -v n="$n" -v r="$round" -v t=$((c1 - c0)) -v hz="$hz" -v k=$((s1 - s0)) \
      'BEGIN { s = t / hz; printf "%d\t%d\t%.2f\t%d\t%.1f\n", n, r, s, k, s * 1e6 / k }' | tee -a "$results"
  done
done

echo "== median CPU per tick, and what N watchers add to it (median over rounds of N's figure minus the same round's with none: the load of a shared machine drifts between rounds)"
awk -F'\t' 'NR > 1 { cpu[$1, $2] = $5; ns[$1] = 1; if ($2 > rounds) rounds = $2 }
  function median(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END { for (k in ns) { all = ""; d = ""; for (r = 1; r <= rounds; r++) { all = all " " cpu[k, r]; d = d " " (cpu[k, r] - cpu[0, r]) }
      m = median(all); dm = median(d); per = (k + 0 > 0) ? dm / k : 0
      printf "%3d watchers: %7.1f us CPU per tick, %+7.1f us vs none (%+.1f us per watcher)\n", k, m, dm, per } }' "$results" | sort -n | tee "$OUT/watch-summary.txt"

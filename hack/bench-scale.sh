#!/usr/bin/env bash
# The healer at scale (make bench-scale): the real healer binary in static mode, its default
# flags but --dry-run, against SIZES simulated replicas on loopback addresses 127.77.x.y
# (test/healer/scale_test.go, build tag integration): light DNS responders and pulse
# listeners (GET /pulse, and GET /pulse?watch=1 streaming a line every 50 ms tick, pulse's default).
# The designs compared (DESIGNS, ';'-separated) run interleaved round by round (A/B, then
# B/A), each: start-up until every replica is healthy; a steady window of WINDOW measuring
# the healer's CPU (utime+stime from /proc) and memory, the probes answered, the heartbeat
# bytes and polls served, the audit lines written; then INJECTIONS hangs (DNS, stream and
# GET /pulse silent, as a stopped process), one replica at a time, each timed from the
# injection to its degraded line.
#   SIZES=100,1000 | ROUNDS=3 | WINDOW=20s | INJECTIONS=8 | DESIGNS='stream;poll'
#   (other designs: 'stream, GOMAXPROCS=1', 'poll, GOMAXPROCS=1', 'stream, probes every 40ms')
#   BASE_REF=ref: also builds the healer at that commit, for the design 'stream@base'
#   (e.g. DESIGNS='stream@base;stream': what a change did, interleaved in one run)
#   PROFILE=DIR: a CPU profile of the healer over each first-round window, in DIR
#   NICE=-10 (default): above other tenants' jobs on a shared machine; NICE= for none
# The results replace the "The healer at scale" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-100,1000}
ROUNDS=${ROUNDS:-3}
WINDOW=${WINDOW:-20s}
INJECTIONS=${INJECTIONS:-8}
DESIGNS=${DESIGNS:-stream;poll}
PROFILE=${PROFILE:-}
NICE=${NICE--10}
OUT_MD=${OUT_MD:-BENCHMARKS.md}
GO=${GO:-go}

export COREDNS_BIN=${COREDNS_BIN:-$PWD/_output/bin/coredns}
export HEALER_BIN=${HEALER_BIN:-$PWD/_output/bin/healer}
if [[ ! -x $COREDNS_BIN || ! -x $HEALER_BIN ]]; then
	make build
fi
[[ -n $PROFILE ]] && mkdir -p "$PROFILE"
frag=$(mktemp)
log=$(mktemp)
base=
trap 'rm -f "$frag"; [[ -z $base ]] || rm -rf "$base"' EXIT
base_note=
if [[ -n ${BASE_REF:-} ]]; then
	base=$(mktemp -d)
	git archive "$BASE_REF" | tar -x -C "$base"
	(cd "$base" && CGO_ENABLED=0 $GO build -trimpath -o "$base/healer-base" ./healer/cmd/healer)
	export BENCH_SCALE_BASE_BIN=$base/healer-base
	base_note=" BASE_REF=$BASE_REF"
	echo "bench-scale: the healer at $BASE_REF ($(git rev-parse --short "$BASE_REF")) is design stream@base"
fi

cmd="make bench-scale SIZES=$SIZES ROUNDS=$ROUNDS WINDOW=$WINDOW INJECTIONS=$INJECTIONS DESIGNS='$DESIGNS' NICE=$NICE$base_note"
echo "bench-scale: $cmd (log: $log)"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
status=0
BENCH_SCALE=1 BENCH_OUT=$frag BENCH_SCALE_SIZES=$SIZES BENCH_SCALE_ROUNDS=$ROUNDS BENCH_SCALE_WINDOW=$WINDOW \
	BENCH_SCALE_INJECTIONS=$INJECTIONS BENCH_SCALE_DESIGNS=$DESIGNS BENCH_SCALE_PROFILE=$PROFILE \
	${NICE:+nice -n $NICE} $GO test -count=1 -timeout 120m -tags integration -run 'TestBenchScale$' -v ./test/healer 2>&1 | tee "$log" || status=$?

section=$(mktemp)
{
	echo "## The healer at scale"
	echo
	echo "<!-- healer-scale: written by hack/bench-scale.sh; rerun it rather than editing by hand -->"
	echo "Produced by \`$cmd\` at commit $(git rev-parse --short HEAD) on $(date -u +%Y-%m-%dT%H:%MZ);"
	echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at the start $load0, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
	echo "The real healer in static mode with its default flags but \`--dry-run\` (one check, every replica probed every"
	echo "20 ms), against simulated replicas at 127.77.x.y: DNS answered by one socket polled every millisecond (one A"
	echo "record), and each replica's pulse listener (GET /pulse, and the stream of a 1.2 KiB line every 50 ms tick, pulse's default)."
	echo "*poll* is \`--pulse-stream=false\` (the heartbeat design before the stream: every heartbeat polled every 20 ms). CPU is the"
	echo "healer process's utime+stime over the steady window; a hang stops a replica's DNS, its stream and its"
	echo "GET /pulse at once, and is timed from the injection to its degraded audit line."
	echo "Targets: 1,000 replicas <= 0.5 core and <= 200 MiB; 100 replicas <= 0.1 core; detection median"
	echo "<= 100 ms, worst <= 200 ms; a healthy fleet writes no audit lines."
	cat "$frag"
	if [[ $status != 0 ]]; then
		echo
		echo "**The run reported failures (exit $status):** $(grep -E '^\s*--- FAIL' "$log" | sed 's/^ *--- FAIL: //; s/ (.*//' | paste -sd, - | sed 's/,/, /g')."
	fi
	echo "<!-- /healer-scale -->"
} >"$section"

touch "$OUT_MD"
awk -v sec="$section" '
	BEGIN { while ((getline l < sec) > 0) body = body l "\n" }
	/^## The healer at scale[[:space:]]*$/ { skip = 1; printf "%s", body; done = 1; next }
	skip && /^<!-- \/healer-scale -->/ { skip = 0; next }
	skip && /^## / { skip = 0 }
	!skip { print }
	END { if (!done) { if (NR > 0) print ""; printf "%s", body } }
' "$OUT_MD" >"$OUT_MD.tmp" && mv "$OUT_MD.tmp" "$OUT_MD"
rm -f "$section"
echo "bench-scale: wrote The healer at scale section of $OUT_MD"
exit "$status"

#!/usr/bin/env bash
# Healer detection benchmark (make bench-detect): real custom CoreDNS x3 on loopback and the
# real healer in static dry-run mode (test/healer, build tag integration).
#   1. per fault class, INJECTIONS injections: time from the fault to the degraded audit line;
#   2. a healthy soak of SOAK under dnsperf load, counting false verdicts and actions;
#   3. (the healer's CPU and memory with 100 and 1,000 replicas: make bench-scale)
# The results replace the "Healer detection" section of BENCHMARKS.md (other sections are
# left alone).
#   4. flapping (a replica hung 300 ms every 2 s) and benign situations held BENIGN each
#      (a client's SERVFAIL storm, an NXDOMAIN storm, a round-robin name, an upstream outage
#      reaching cached replicas apart): no degraded state, no action;
#   5. the benign canary row: the freshness canary exists only in Kubernetes mode, so it is the
#      e2e test TestCanaryThroughPlainCache on the local cluster (root, `make cluster-bins`),
#      held BENIGN too; without root the row says it was not run.
#   SOAK=10m (default) | SHORT=1 (SOAK=1m) | INJECTIONS=20 | SOAK_QPS=500
#   BENIGN=30s | FLAP_ROUNDS=5 | HOG=N: N busy loops beside everything (a busy machine)
#   ONLY=Detect|Flapping|Benign|Canary|Soak (a regexp of the parts to run; default all)
set -euo pipefail
cd "$(dirname "$0")/.."

INJECTIONS=${INJECTIONS:-20}
SOAK=${SOAK:-10m}
[[ -n ${SHORT:-} ]] && SOAK=${SHORT_SOAK:-1m}
SOAK_QPS=${SOAK_QPS:-500}
BENIGN=${BENIGN:-30s}
FLAP_ROUNDS=${FLAP_ROUNDS:-5}
HOG=${HOG:-0}
ONLY=${ONLY:-Detect|Flapping|Benign|Canary|Soak}
OUT_MD=${OUT_MD:-BENCHMARKS.md}
# On a shared machine the benchmark runs at a higher priority (as a Kubernetes CPU request
# would give CoreDNS and the healer), so that a healthy soak does not measure other
# tenants' compile jobs starving CoreDNS. NICE= (empty) runs it at normal priority.
NICE=${NICE--10}
GO=${GO:-go}

if ! command -v dnsperf >/dev/null; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		apt-get install -y dnsperf >/dev/null || { apt-get update >/dev/null && apt-get install -y dnsperf >/dev/null; }
	else
		echo "bench-detect: dnsperf is missing (apt-get install -y dnsperf)" >&2
		exit 1
	fi
fi
export COREDNS_BIN=${COREDNS_BIN:-$PWD/_output/bin/coredns}
export HEALER_BIN=${HEALER_BIN:-$PWD/_output/bin/healer}
if [[ ! -x $COREDNS_BIN || ! -x $HEALER_BIN ]]; then
	make build
fi

frag=$(mktemp)
log=$(mktemp)
canary=$(mktemp)
hogs=()
cleanup() {
	((${#hogs[@]})) && kill "${hogs[@]}" 2>/dev/null
	rm -f "$frag" "$log" "$canary"
}
trap cleanup EXIT
for ((i = 0; i < HOG; i++)); do
	# A CPU hog at normal priority: the machine is busy, as a node shared with other pods.
	sh -c 'while :; do :; done' &
	hogs+=($!)
done
cmd="make bench-detect SOAK=$SOAK INJECTIONS=$INJECTIONS SOAK_QPS=$SOAK_QPS NICE=$NICE BENIGN=$BENIGN FLAP_ROUNDS=$FLAP_ROUNDS HOG=$HOG ONLY='$ONLY'"
echo "bench-detect: $cmd (log: $log)"
status=0
BENCH_DETECT=1 BENCH_OUT=$frag BENCH_INJECTIONS=$INJECTIONS BENCH_SOAK=$SOAK BENCH_SOAK_QPS=$SOAK_QPS \
	BENCH_BENIGN=$BENIGN BENCH_FLAP_ROUNDS=$FLAP_ROUNDS \
	${NICE:+nice -n $NICE} $GO test -count=1 -timeout 120m -tags integration -run "TestBench($ONLY)\$" -v ./test/healer 2>&1 | tee "$log" || status=$?

if [[ Canary =~ ^($ONLY)$ ]]; then
	if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null || ! command -v iptables >/dev/null; then
		echo "bench-detect: the canary row needs the local cluster (root, ip, iptables): not run" >&2
		echo "| a canary answered through a plain \`cache 30\` (in-cluster) | not run: needs root, ip and iptables for the local cluster | | | | |" >"$canary"
	else
		make cluster-bins
		echo "bench-detect: the canary row: e2e TestCanaryThroughPlainCache on the local cluster, held $BENIGN"
		DNSPULSE_BIN_DIR=$PWD/_output/bin DNSPULSE_CANARY_HOLD=$BENIGN DNSPULSE_BENCH_CANARY_OUT=$canary \
			${NICE:+nice -n $NICE} $GO test -count=1 -timeout 20m -tags e2e -run 'TestCanaryThroughPlainCache$' -v ./e2e/heal 2>&1 | tee -a "$log" || status=$?
		[[ -s $canary ]] || echo "| a canary answered through a plain \`cache 30\` (in-cluster) | the e2e test failed before its row: see the log | | | | |" >"$canary"
	fi
	# The row goes at the end of the benign table (or starts one when the benign part did not run).
	awk -v row="$(cat "$canary")" '
		/^\| benign situation/ { inb = 1 }
		inb && !/^\|/ { print row; inb = 0; done = 1 }
		{ print }
		END {
			if (inb) { print row; done = 1 }
			if (!done) { print ""; print "| benign situation | held | degraded states (false) | remediation lines | suspect transitions | ended global |"; print "|---|---|---|---|---|---|"; print row }
		}' "$frag" >"$frag.tmp" && mv "$frag.tmp" "$frag"
fi

section=$(mktemp)
{
	echo "## Healer detection"
	echo
	echo "<!-- healer-detection: written by hack/bench-detect.sh; rerun it rather than editing by hand -->"
	echo "Produced by \`$cmd\` at commit $(git rev-parse --short HEAD) on $(date -u +%Y-%m-%dT%H:%MZ);"
	echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
	echo "Three custom CoreDNS processes on 127.0.0.x with the pulse line at its defaults (\`pulse ADDR\`: tick"
	echo "50ms, self-probe answered by pulse), each forwarding to its own in-test upstream where the fault is"
	echo "switched on; the healer in static mode with its default flags but --dry-run (probes and heartbeat reads"
	echo "every 20 ms), faults injected once the replicas are past --warm-up. Latency = audit line time - injection"
	echo "time. CPU hog beside: $HOG busy loops. The canary row alone runs in Kubernetes mode (the canary is an"
	echo "ExternalName Service the healer rotates): the e2e test TestCanaryThroughPlainCache on the local cluster"
	echo "(three CoreDNS pods, the healer installed by its chart, canary every 2 s, max lag 3 s), not dry run."
	echo "Targets: median <= 100 ms and worst <= 200 ms per class; no false verdict; <= 0.25 core, <= 100 MiB."
	echo "GOMAXPROCS=1 is what Go (>= 1.25) picks by itself under a CPU limit of one core or less."
	echo
	cat "$frag"
	if [[ $status != 0 ]]; then
		echo
		echo "**The run reported failures (exit $status):** $(grep -E '^\s*--- FAIL' "$log" | sed 's/^ *--- FAIL: //; s/ (.*//' | paste -sd, - | sed 's/,/, /g')."
	fi
	echo "<!-- /healer-detection -->"
} >"$section"

touch "$OUT_MD"
awk -v sec="$section" '
	BEGIN { while ((getline l < sec) > 0) body = body l "\n" }
	/^## Healer detection[[:space:]]*$/ { skip = 1; printf "%s", body; done = 1; next }
	skip && /^<!-- \/healer-detection -->/ { skip = 0; next }
	skip && /^## / { skip = 0 }
	!skip { print }
	END { if (!done) { if (NR > 0) print ""; printf "%s", body } }
' "$OUT_MD" >"$OUT_MD.tmp" && mv "$OUT_MD.tmp" "$OUT_MD"
rm -f "$section"
echo "bench-detect: wrote the Healer detection section of $OUT_MD"
exit "$status"

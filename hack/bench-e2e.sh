#!/usr/bin/env bash
# In-cluster healing benchmark (make bench-e2e): the local cluster of e2e/cluster, CoreDNS x3 with
# pulse, the healer installed by its Helm chart (e2e/heal's values), and each single-replica fault
# class injected ROUNDS times. Per class: median and worst time from the fault to the degraded
# verdict (audit line), to traffic drained (the pod out of the kube-dns EndpointSlice's ready
# endpoints) and to a replacement pod answering on its IP.
# The results replace the "In-cluster healing" section of BENCHMARKS.md (other sections are left alone).
#   ROUNDS=10 | FAULTS=hung,upstream,slow,udp-drop,stale (a subset) | OUT_MD=BENCHMARKS.md
#   PROBES=defaults (the chart's probe and heartbeat-read settings, what a user gets) | loaded
#   (the e2e suite's: probes every 50 ms, 250 ms timeout, for a loaded machine)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-10}
FAULTS=${FAULTS:-}
OUT_MD=${OUT_MD:-BENCHMARKS.md}
GO=${GO:-go}
BIN=${BIN:-_output/bin}
PROBES=${PROBES:-defaults}
case $PROBES in
defaults) probe_defaults=1 ;;
loaded) probe_defaults=0 ;;
*) echo "bench-e2e: PROBES=$PROBES: want defaults or loaded" >&2; exit 2 ;;
esac

if [[ $(id -u) != 0 ]]; then
	echo "bench-e2e: the local cluster needs root (network namespaces, veths, iptables)" >&2
	exit 1
fi
for b in etcd kube-apiserver helm; do
	[[ -x $BIN/$b ]] || { make cluster-bins; break; }
done
[[ -x $BIN/coredns && -x $BIN/healer ]] || make build

frag=$(mktemp)
log=$(mktemp)
trap 'rm -f "$frag" "$log"' EXIT
cmd="make bench-e2e ROUNDS=$ROUNDS${FAULTS:+ FAULTS=$FAULTS} PROBES=$PROBES"
echo "bench-e2e: $cmd (log: $log)"
status=0
DNSPULSE_E2E_PROBE_DEFAULTS=$probe_defaults DNSPULSE_BIN_DIR=$(cd "$BIN" && pwd) DNSPULSE_BENCH_ROUNDS=$ROUNDS DNSPULSE_BENCH_FAULTS=$FAULTS DNSPULSE_BENCH_OUT=$frag \
	$GO test -count=1 -timeout 120m -tags e2e -run 'TestBenchHealing$' -v ./e2e/heal 2>&1 | tee "$log" || status=$?
[[ -s $frag ]] || { echo "bench-e2e: no results (exit $status); see $log" >&2; trap - EXIT; exit 1; }

section=$(mktemp)
{
	echo "## In-cluster healing"
	echo
	echo "<!-- in-cluster-healing: written by hack/bench-e2e.sh; rerun it rather than editing by hand -->"
	echo "Produced by \`$cmd\` at commit $(git rev-parse --short HEAD) on $(date -u +%Y-%m-%dT%H:%MZ);"
	echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
	echo "The local cluster of e2e/cluster (real etcd, kube-apiserver, controller-manager, scheduler; every pod in"
	echo "its own network namespace), CoreDNS x3 with pulse, the healer installed with \`helm install\` of"
	if [[ $probe_defaults == 1 ]]; then
		echo "healer/chart: 2 replicas, leader election, readiness gate, the chart's probes (every 20 ms, 100 ms timeout),"
	else
		echo "healer/chart: 2 replicas, leader election, readiness gate, probes every 50 ms with a 250 ms timeout"
		echo "(PROBES=loaded: the e2e suite's values for a loaded machine; the chart's are 20/100 ms),"
	fi
	echo "heartbeat streams (pulse's default tick, 50 ms), pulse opening its own gate, global cooldown 2 s and"
	echo "short cooldowns (rounds follow each other), the chart's other defaults."
	echo "Faults: hung = SIGSTOP; upstream = the pod's route to its upstream dropped; slow = +120 ms ± 20 ms on"
	echo "every packet into the pod; udp-drop = UDP port 53 dropped (TCP works); stale = the pod's apiserver"
	echo "connection cut (the freshness canary rotates every 2 s, max lag 3 s). Times from the injection to:"
	echo "the degraded audit line; the pod leaving the kube-dns EndpointSlice's ready endpoints; a replacement"
	echo "pod Ready and answering on its IP (verdict = the first degraded line of either healer). Each round starts"
	echo "from three healthy replicas, the previous round's evicted pod gone."
	echo
	cat "$frag"
	if [[ $status != 0 ]]; then
		echo
		echo "**The run reported failures (exit $status): rounds that did not complete are missing, and the last column counts healthy replacements the healer evicted or kept judging degraded.**"
	fi
	echo "<!-- /in-cluster-healing -->"
} >"$section"

touch "$OUT_MD"
awk -v sec="$section" '
	BEGIN { while ((getline l < sec) > 0) body = body l "\n" }
	/^## In-cluster healing[[:space:]]*$/ { skip = 1; printf "%s", body; done = 1; next }
	skip && /^<!-- \/in-cluster-healing -->/ { skip = 0; next }
	skip && /^## / { skip = 0 }
	!skip { print }
	END { if (!done) { if (NR > 0) print ""; printf "%s", body } }
' "$OUT_MD" >"$OUT_MD.tmp" && mv "$OUT_MD.tmp" "$OUT_MD"
rm -f "$section"
echo "bench-e2e: wrote the In-cluster healing section of $OUT_MD"
exit "$status"

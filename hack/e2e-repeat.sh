#!/usr/bin/env bash
# make e2e-repeat: the flake count. Runs the whole end-to-end suite (every package of ./e2e/..., one
# at a time, as `make e2e` does) N times in a row, never stopping at a failure, and summarises
# pass/fail per run and per test. Each run's test output is kept in OUT/run-K/<package>.log; the
# cluster's logs (components, pods, audit) of a package run that failed in OUT/run-K/<package>-cluster/.
#   N=10 (runs) | HOG=1 (a busy loop per CPU beside the suite; HOG=3: three loops) |
#   RUN=regexp (go test -run, e.g. 'TestReplacementHealthy|TestPodDeleted') | PKGS="e2e/heal" (a subset) |
#   OUT=folder
# Exit status 0 only when every run passed. Needs root, like make e2e.
set -euo pipefail
# The whole script is one function, parsed before it runs: a run takes over an hour, and bash
# would otherwise read an edited or checked-out script from the middle.
main() {
	cd "$(dirname "$0")/.."
	ROOT=$(pwd)
	GO=${GO:-go}
	BIN=${BIN:-_output/bin}
	N=${N:-10}
	HOG=${HOG:-0}
	RUN=${RUN:-}
	OUT=${OUT:-_output/e2e-repeat/$(date -u +%Y%m%dT%H%M%SZ)}
	PKGS_SET=${PKGS:-}
	read -r -a PKGS <<<"${PKGS:-e2e e2e/heal}"

	if [[ $(id -u) != 0 ]]; then
		echo "e2e-repeat: the local cluster needs root (network namespaces, veths, iptables)" >&2
		exit 1
	fi
	# What .ci/run installs for the suite: without it every run fails at once, ten times over.
	for c in ip iptables; do
		command -v "$c" >/dev/null || { echo "e2e-repeat: $c is missing (apt-get install -y iproute2 iptables, as .ci/run does)" >&2; exit 1; }
	done
	[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "e2e-repeat: N=$N is not a positive number" >&2; exit 2; }
	[[ $HOG =~ ^[0-9]+$ ]] || { echo "e2e-repeat: HOG=$HOG is not a number" >&2; exit 2; }
	mkdir -p "$OUT"
	OUT=$(cd "$OUT" && pwd)
	BIN=$(cd "$BIN" && pwd)

	# The test binaries are compiled once: N runs test the same code.
	for p in "${PKGS[@]}"; do
		$GO test -c -tags e2e -o "$OUT/${p//\//-}.test" "./$p"
	done

	hogs=()
	stop_hogs() {
		for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done
		hogs=()
	}
	trap stop_hogs EXIT
	if ((HOG > 0)); then
		loops=$HOG
		((HOG == 1)) && loops=$(nproc)
		for ((i = 0; i < loops; i++)); do
			bash -c 'while :; do :; done' &
			hogs+=($!)
		done
		echo "e2e-repeat: $loops busy loop(s) beside the suite (pids ${hogs[*]})"
	fi

	summary=$OUT/summary.md
	results=$OUT/results.tsv # run, package, test, result, seconds
	: >"$results"
	began=$(date +%s)
	failed_runs=0
	for ((k = 1; k <= N; k++)); do
		dir=$OUT/run-$k
		mkdir -p "$dir"
		run_began=$(date +%s)
		run_status=PASS
		for p in "${PKGS[@]}"; do
			name=${p//\//-}
			log=$dir/$name.log
			rc=0
			# As `go test` runs it: in the package folder, a cluster of its own; its logs copied on Stop.
			(cd "$ROOT/$p" && DNSPULSE_BIN_DIR=$BIN DNSPULSE_E2E_LOGS=$dir/$name-cluster \
				"$OUT/$name.test" -test.v -test.count=1 -test.timeout 40m ${RUN:+-test.run "$RUN"} >"$log" 2>&1) || rc=$?
			if ((rc == 0)); then
				rm -rf "$dir/$name-cluster" # kept for failures only: a passing run's logs are ~100 MB
			else
				run_status=FAIL
			fi
			echo "exit $rc" >>"$log"
			# `--- PASS: TestX/sub (1.23s)` at any depth; a panic or timeout leaves the running test unnamed.
			sed -nE 's/^ *--- (PASS|FAIL|SKIP): ([^ ]+) \(([0-9.]+)s\)$/\2\t\1\t\3/p' "$log" |
				awk -v k="$k" -v p="$p" -F'\t' '{ printf "%s\t%s\t%s\t%s\t%s\n", k, p, $1, $2, $3 }' >>"$results"
			if ((rc != 0)) && ! grep -qE "^--- FAIL" "$log"; then
				printf '%s\t%s\t%s\t%s\t%s\n' "$k" "$p" "(package: exit $rc, no test failed: TestMain, panic or timeout)" FAIL 0 >>"$results"
			fi
		done
		secs=$(($(date +%s) - run_began))
		[[ $run_status == FAIL ]] && failed_runs=$((failed_runs + 1))
		fails=$(awk -F'\t' -v k="$k" '$1 == k && $4 == "FAIL" { printf "%s%s", sep, $3; sep = ", " }' "$results")
		echo "e2e-repeat: run $k/$N $run_status in ${secs}s${fails:+ (failed: $fails)}; logs $dir"
		echo "$k $run_status $secs $fails" >>"$OUT/runs.txt"
	done
	stop_hogs
	total=$(($(date +%s) - began))

	{
		echo "# e2e-repeat: $((N - failed_runs))/$N runs passed"
		echo
		echo "Command: \`make e2e-repeat N=$N$( ((HOG > 0)) && echo " HOG=$HOG")${RUN:+ RUN='$RUN'}${PKGS_SET:+ PKGS='${PKGS[*]}'}\` at commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- e2e hack healer plugin heartbeat build || echo ' (with local changes)');"
		echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg); busy loops beside it: $(((HOG == 1) ? $(nproc) : HOG)); total $((total / 60))m$((total % 60))s."
		echo
		echo "| run | result | seconds | failed tests |"
		echo "|---|---|---|---|"
		while read -r k st secs fails; do
			echo "| $k | $st | $secs | ${fails:-} |"
		done <"$OUT/runs.txt"
		echo
		echo "| package | test | passed | failed | median s | worst s |"
		echo "|---|---|---|---|---|---|"
		sort -t$'\t' -k2,2 -k3,3 -k5,5n "$results" | awk -F'\t' '
			{ key = $2 "\t" $3; if (!(key in seen)) { order[++n] = key; seen[key] = 1 }
			  if ($4 == "PASS") pass[key]++; else if ($4 == "FAIL") fail[key]++
			  t[key, ++c[key]] = $5 }
			END { for (i = 1; i <= n; i++) { key = order[i]; split(key, kv, "\t")
				printf "| %s | %s | %d | %d | %s | %s |\n", kv[1], kv[2], pass[key], fail[key], t[key, int((c[key] + 1) / 2)], t[key, c[key]] } }'
	} >"$summary"
	rm -f "$OUT"/*.test
	cat "$summary"
	echo
	echo "e2e-repeat: summary $summary"
	((failed_runs == 0))
}
main "$@"
exit

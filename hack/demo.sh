#!/usr/bin/env bash
# make demo: the local cluster (e2e/cluster), CoreDNS x3 with pulse, the healer installed with
# `helm install` of healer/chart, a steady stream of client queries, one replica hung (SIGSTOP),
# and the healing printed as it happens. The cluster then stays up, with the commands to look
# around, until Ctrl-C; everything is removed on exit.
#   DEMO_WAIT=0 (end right after the story) | DEMO_WAIT=10m (stay up that long)
# The first run builds the control plane (make cluster-bins, ~10 min, with progress) and the
# binaries (make build). Needs root: network namespaces, veths, iptables.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-_output/bin}
GO=${GO:-go}

if [[ $(id -u) != 0 ]]; then
	echo "demo: the local cluster needs root (network namespaces, veths, iptables); try: sudo make demo" >&2
	exit 1
fi
for tool in ip tc nsenter unshare iptables; do
	command -v "$tool" >/dev/null || { echo "demo: $tool is missing (apt-get install iproute2 util-linux iptables)" >&2; exit 1; }
done
missing=
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm; do
	[[ -x $BIN/$b ]] || missing=1
done
if [[ -n $missing ]]; then
	echo "demo: building the control plane once (etcd, kube-*, kubectl, helm; ~10 min on a laptop)"
	make cluster-bins
fi
if [[ ! -x $BIN/coredns || ! -x $BIN/healer ]]; then
	echo "demo: building coredns (with pulse) and healer"
	make build
fi
# A crashed earlier run may have left a cluster behind; it would only cost an index.
mkdir -p "$BIN"
echo "demo: compiling the demo driver (e2e/cmd/demo)"
$GO build -o "$BIN/dnspulse-demo" ./e2e/cmd/demo
DNSPULSE_BIN_DIR=$(cd "$BIN" && pwd) exec "$BIN/dnspulse-demo"

#!/usr/bin/env bash
# `make cluster`: the local cluster of e2e/cluster until Ctrl-C. `hack/cluster.sh down` (make
# cluster-down): remove whatever a crashed run left behind (processes, netns, links, bridge, state).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
GO=${GO:-go}
BIN=${BIN:-_output/bin}
if [[ $(id -u) != 0 ]]; then
  echo "hack/cluster.sh: needs root (network namespaces, veths, mounts)" >&2
  exit 1
fi
mkdir -p "$BIN"
CGO_ENABLED=0 $GO build -o "$BIN/e2e-cluster" ./e2e/cmd/cluster
if [[ ${1:-} == down ]]; then
  exec "$BIN/e2e-cluster" -down
fi
# The Go program cleans up on SIGINT/SIGTERM; after a crash of it, sweep what it left (this also
# removes any other dnspulse cluster on the machine, which is why it is not done on success).
trap : INT # Ctrl-C reaches the program (same process group); this shell waits for its cleanup
set +e
"$BIN/e2e-cluster" "$@"
rc=$?
if ((rc != 0)); then
  echo "hack/cluster.sh: cluster exited with $rc; sweeping leftovers" >&2
  "$BIN/e2e-cluster" -down || true
fi
exit $rc

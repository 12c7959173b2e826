#!/usr/bin/env bash
# Runs smoke_test.go (build tag kubesmoke) against a throw-away etcd + kube-apiserver on
# loopback, with the binaries e2e/hack/build-cluster-bins.sh caches. No controller-manager,
# scheduler or kubelet: the test needs API objects only.
#   healer/internal/kube/smoke.sh            (from the repository root)
set -euo pipefail
bins=${CLUSTER_BINS:-$(ls -d "${DNSPULSE_CACHE:-$HOME/.cache/dnspulse}"/cluster-bins/*/ 2>/dev/null | head -1)}
[[ -x "$bins/etcd" && -x "$bins/kube-apiserver" ]] || { echo "smoke.sh: no etcd/kube-apiserver in '$bins' (make cluster-bins, or set CLUSTER_BINS)" >&2; exit 2; }
dir=$(mktemp -d /tmp/dnspulse-kubesmoke.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ec=$(port) ep=$(port) ap=$(port)
admin=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n') healer=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s,admin,admin,"system:masters"\n%s,healer,healer\n' "$admin" "$healer" > "$dir/tokens.csv"
openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null && openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
"$bins/etcd" --name=default --data-dir="$dir/etcd" --listen-client-urls=http://127.0.0.1:$ec --advertise-client-urls=http://127.0.0.1:$ec \
  --listen-peer-urls=http://127.0.0.1:$ep --initial-advertise-peer-urls=http://127.0.0.1:$ep --initial-cluster=default=http://127.0.0.1:$ep \
  --unsafe-no-fsync --log-level=warn > "$dir/etcd.log" 2>&1 & pids+=($!)
# advertise-address may not be loopback: a reserved test address, with no endpoint reconciler.
"$bins/kube-apiserver" --etcd-servers=http://127.0.0.1:$ec --bind-address=127.0.0.1 --secure-port=$ap \
  --advertise-address=198.18.255.1 --endpoint-reconciler-type=none --service-cluster-ip-range=10.96.0.0/16 \
  --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" --cert-dir="$dir/certs" \
  --profiling=false > "$dir/apiserver.log" 2>&1 & pids+=($!)
for _ in $(seq 120); do
  curl -skf -H "Authorization: Bearer $admin" "https://127.0.0.1:$ap/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -skf -H "Authorization: Bearer $admin" "https://127.0.0.1:$ap/readyz" >/dev/null || { echo "smoke.sh: kube-apiserver not ready; log:" >&2; tail -20 "$dir/apiserver.log" >&2; exit 1; }
KUBE_SMOKE_HOST=https://127.0.0.1:$ap KUBE_SMOKE_ADMIN_TOKEN=$admin KUBE_SMOKE_HEALER_TOKEN=$healer \
  go test -race -tags kubesmoke -run Smoke -count=1 -v ./healer/internal/kube/

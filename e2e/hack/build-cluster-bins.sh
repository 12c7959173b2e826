#!/usr/bin/env bash
# Builds the control-plane binaries the e2e harness runs (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, helm) from pinned upstream modules, without touching the project's go.mod:
# each upstream gets its own throw-away module in a temp dir. The real cache lives outside the tree, keyed by a
# hash of the pins, so a fresh clone on the same machine (CI) reuses it; _output/bin gets links.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
# Bump when the recipe below changes in a way that changes the binaries.
RECIPE_REV=1

GO=${GO:-go}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT_BIN=${OUT_BIN:-$ROOT/_output/bin}
GOOS=$($GO env GOOS)
GOARCH=$($GO env GOARCH)
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

KEY=$(printf 'k8s=%s etcd=%s helm=%s os=%s arch=%s rev=%s' "$K8S_VERSION" "$ETCD_VERSION" "$HELM_VERSION" "$GOOS" "$GOARCH" "$RECIPE_REV" | sha256sum | cut -c1-16)
CACHE=${DNSPULSE_CACHE:-$HOME/.cache/dnspulse}/cluster-bins/$KEY
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ALL_BINS=("${K8S_BINS[@]}" etcd helm)

log() { printf '[cluster-bins %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

mkdir -p "$CACHE" "$OUT_BIN"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dnspulse-cluster-bins.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

have() { [[ -x "$CACHE/$1" ]]; }

# install_bin NAME: moves the fresh build from $WORK into the cache atomically, so an interrupted build never
# leaves a half-written binary that a later run would trust.
install_bin() { mv -f "$WORK/bin/$1" "$CACHE/.$1.tmp" && mv -f "$CACHE/.$1.tmp" "$CACHE/$1"; }

BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

build_kubernetes() {
  local need=() b
  for b in "${K8S_BINS[@]}"; do have "$b" || need+=("$b"); done
  ((${#need[@]})) || { log "kubernetes $K8S_VERSION: cached"; return; }
  log "kubernetes $K8S_VERSION: resolving module (${need[*]})"
  local dir=$WORK/k8s
  mkdir -p "$dir"
  (cd "$dir" && $GO mod init dnspulse.local/cluster-bins/k8s >/dev/null 2>&1)
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths, which
  # a consumer cannot see; derive the list from its go.mod and pin each to the matching v0.X.Y tag.
  local gomod staging_ver
  gomod=$(cd "$dir" && $GO mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -f "$gomod" ]] || { log "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  staging_ver=v0.${K8S_VERSION#v1.}
  local mods
  mods=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1} $2 ~ /^k8s\.io\// && $3 == "v0.0.0" {print $2}' "$gomod" | sort -u)
  [[ -n "$mods" ]] || { log "no k8s.io/* v0.0.0 requirements found in $gomod"; exit 1; }
  log "kubernetes: $(wc -w <<<"$mods") staging modules -> $staging_ver"
  {
    echo "require k8s.io/kubernetes $K8S_VERSION"
    for m in $mods; do echo "replace $m => $m $staging_ver"; done
  } >>"$dir/go.mod"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$BUILD_DATE"
  done
  local pkgs=()
  for b in "${need[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  (cd "$dir" && $GO get "${pkgs[@]}" 2>&1 | tail -n 5 >&2) || { log "go get kubernetes failed"; exit 1; }
  mkdir -p "$WORK/bin"
  for b in "${need[@]}"; do
    log "building $b (kubernetes $K8S_VERSION)"
    (cd "$dir" && $GO build -trimpath -ldflags "$ld" -o "$WORK/bin/$b" "k8s.io/kubernetes/cmd/$b")
    install_bin "$b"
  done
}

build_etcd() {
  have etcd && { log "etcd $ETCD_VERSION: cached"; return; }
  log "etcd $ETCD_VERSION: resolving module"
  local dir=$WORK/etcd
  mkdir -p "$dir" "$WORK/bin"
  (cd "$dir" && $GO mod init dnspulse.local/cluster-bins/etcd >/dev/null 2>&1 && $GO get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>&1 | tail -n 5 >&2)
  log "building etcd"
  (cd "$dir" && $GO build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" -o "$WORK/bin/etcd" go.etcd.io/etcd/server/v3)
  install_bin etcd
}

build_helm() {
  have helm && { log "helm $HELM_VERSION: cached"; return; }
  log "helm $HELM_VERSION: resolving module"
  local dir=$WORK/helm
  mkdir -p "$dir" "$WORK/bin"
  (cd "$dir" && $GO mod init dnspulse.local/cluster-bins/helm >/dev/null 2>&1 && $GO get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>&1 | tail -n 5 >&2)
  # Helm's Makefile derives the Kubernetes version `helm template` assumes (Capabilities.KubeVersion) from
  # its client-go; without these flags it falls back to v1.20.
  local cgo major minor
  cgo=$(cd "$dir" && $GO list -m -f '{{.Version}}' k8s.io/client-go)
  # client-go v0.N.x goes with Kubernetes 1.N (helm's Makefile: major = 0 + 1).
  major=1; minor=${cgo#v0.}; minor=${minor%%.*}
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
  done
  log "building helm (client-go $cgo -> kube $major.$minor)"
  (cd "$dir" && $GO build -trimpath -ldflags "$ld" -o "$WORK/bin/helm" helm.sh/helm/v3/cmd/helm)
  install_bin helm
}

main() {
  local start=$SECONDS b
  log "cache $CACHE"
  build_etcd
  build_kubernetes
  build_helm
  for b in "${ALL_BINS[@]}"; do
    ln -sfn "$CACHE/$b" "$OUT_BIN/$b"
  done
  log "done in $((SECONDS - start))s: ${ALL_BINS[*]} linked into ${OUT_BIN#"$ROOT"/}"
}

# One call at the very end: bash has parsed the whole file before anything runs, so editing the
# script during a 20-minute build cannot derail it.
main "$@"
exit

#!/usr/bin/env bash
# Builds the dnspulse images (coredns, healer) from the static binaries in _output/bin.
#
#   build/image/build.sh [coredns] [healer]      (default: both)
#
# With a Docker engine (`docker info` answers) it runs `docker build`; without one it uses
# Debian's daemonless buildah with the vfs storage driver (works unprivileged in a
# container) and writes OCI archives to _output/images/NAME.tar, which the image test
# unpacks. Nothing is pulled: the Dockerfiles are FROM scratch.
#
# Environment: VERSION, REVISION (labels and tag), REGISTRY (image name prefix,
# default "dnspulse"), OUTPUT (default _output), IMAGE_BUILDER (docker|buildah to force one).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
OUTPUT=${OUTPUT:-_output}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=${REVISION:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
REGISTRY=${REGISTRY:-dnspulse}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(coredns healer)

builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		builder=docker
	else
		builder=buildah
	fi
fi
if [ "$builder" = buildah ] && ! command -v buildah >/dev/null 2>&1; then
	echo "image: no Docker engine and no buildah; installing Debian's buildah" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y buildah >/dev/null
fi
# vfs needs no overlay mounts, chroot isolation no user namespaces: both work in a
# container without privileges. A FROM scratch build with only COPY runs nothing anyway.
buildah=(buildah --storage-driver vfs)
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

mkdir -p "$OUTPUT/images"
for name in "${names[@]}"; do
	case $name in coredns|healer) ;; *) echo "image: unknown image $name (coredns|healer)" >&2; exit 2 ;; esac
	bin="$OUTPUT/bin/$name"
	[ -x "$bin" ] || { echo "image: $bin missing: run 'make build-$name' first" >&2; exit 1; }
	[ -r "$CA_BUNDLE" ] || { echo "image: CA bundle $CA_BUNDLE not readable (install ca-certificates)" >&2; exit 1; }

	ctx="$OUTPUT/images/context-$name"
	rm -rf "$ctx"
	mkdir -p "$ctx/etc"
	cp build/image/rootfs/etc/passwd build/image/rootfs/etc/group "$ctx/etc/"
	cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
	cp "$bin" "$ctx/$name"
	chmod 0755 "$ctx/$name"
	chmod 0644 "$ctx/etc/passwd" "$ctx/etc/group" "$ctx/ca-certificates.crt"
	if [ "$name" = coredns ]; then
		# As upstream CoreDNS's image: the file capability lets the nonroot user bind :53
		# when the pod adds NET_BIND_SERVICE (Kubernetes sets no ambient capabilities,
		# and with allowPrivilegeEscalation=false a file capability may only keep what
		# the container was granted, never more).
		command -v setcap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y libcap2-bin >/dev/null
		setcap cap_net_bind_service=+ep "$ctx/$name"
	fi

	tag="$REGISTRY/$name:$VERSION"
	args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" -f "build/$name/Dockerfile" -t "$tag")
	echo "image: building $tag with $builder" >&2
	if [ "$builder" = docker ]; then
		docker build "${args[@]}" "$ctx"
		docker save -o "$OUTPUT/images/$name.tar" "$tag"
	else
		"${buildah[@]}" bud --format oci --layers=false "${args[@]}" "$ctx"
		rm -f "$OUTPUT/images/$name.tar"
		"${buildah[@]}" push "$tag" "oci-archive:$OUTPUT/images/$name.tar:$tag"
	fi
	echo "image: $tag -> $OUTPUT/images/$name.tar" >&2
done

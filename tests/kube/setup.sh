#!/usr/bin/env bash
# Builds the Kubernetes control plane that the real-Kubernetes tests run, from the Go
# module proxy at the versions pinned in tests/kube/tools/*/go.mod:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
#   etcd (go.etcd.io/etcd/server/v3) and kwok (sigs.k8s.io/kwok), plus kwok's stages
#   and Gateway API's CRDs (sigs.k8s.io/gateway-api).
# The binaries are cached outside the clone, keyed by the pins and the Go version, so
# a second run (and CI on a warm machine) builds nothing. Prints the directory.
#
#   tests/kube/setup.sh            # prints e.g. ~/.cache/flotilla/kube/<key>/bin
#   FLOTILLA_KUBE_CACHE=/some/dir tests/kube/setup.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tools="$here/tools"
cache="${FLOTILLA_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/kube}"
key=$( { go version; cat "$0" "$here"/stages/*.yaml "$tools"/*/go.mod "$tools"/*/go.sum; } | sha256sum | cut -c1-16)
bin="$cache/$key/bin"

if [[ -f "$bin/.complete" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$bin"
# One builder at a time: the tests of several crates may ask at once.
exec 9>"$cache/$key.lock"
flock 9
if [[ -f "$bin/.complete" ]]; then
    echo "$bin"
    exit 0
fi

# build MODULE OUTPUT PACKAGE…: OUTPUT is a file for one package, a directory for several.
build() {
    local module="$1" output="$2"
    shift 2
    echo "building $* (tools/$module; minutes on a fresh machine)" >&2
    (cd "$tools/$module" && go build -trimpath -ldflags="${LDFLAGS:--s -w}" -o "$output" "$@") >&2
}
# The version the binaries report (`kubectl version`, /version), as Kubernetes' own
# release build stamps it.
k8s_version=$(cd "$tools/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=${k8s_version#v1.}
minor=${minor%%.*}
stamp="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1"
stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
stamp="$stamp -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitMajor=1"
stamp="$stamp -X k8s.io/client-go/pkg/version.gitMinor=$minor"
LDFLAGS="-s -w $stamp" build kubernetes "$bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
build etcd "$bin/etcd" go.etcd.io/etcd/server/v3
build kwok "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok

# kwok's default stages (what kwokctl gives it): nodes become Ready and keep their
# lease; pods become Ready and complete. Ours (stages/): a deleted pod lingers a
# little before it goes.
kwok_dir=$(cd "$tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
stages="$kwok_dir/kustomize/stage"
for stage in "$stages"/node/fast/node-initialize.yaml "$stages"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    "$stages"/pod/fast/pod-ready.yaml "$stages"/pod/fast/pod-complete.yaml "$here"/stages/*.yaml; do
    echo "---"
    cat "$stage"
done >"$bin/kwok-stages.yaml"

# Gateway API's CRDs (the standard channel), which ambient Istio's waypoints and
# east-west gateways are made of; only their YAML is used, nothing is built.
gateway_api=v1.6.3
gateway_dir=$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/gateway-api@$gateway_api" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
for crd in "$gateway_dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
    echo "---"
    cat "$crd"
done >"$bin/gateway-api-crds.yaml"

touch "$bin/.complete"
echo "$bin"

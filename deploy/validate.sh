#!/usr/bin/env bash
# Renders `flotilla install` for several option sets (and the kustomize overlays,
# when kubectl is on the PATH) and validates every object against the Kubernetes
# OpenAPI schemas with kubernetes-validate, strictly (unknown fields are errors).
# Istio objects are validated by `cargo test -p flotilla-kube` against the vendored
# CRD schemas (deploy/schemas/istio-crds.yaml); kubernetes-validate has no CRDs.
#
#   deploy/validate.sh            # from the repository root
#   K8S_VERSION=1.33.0 deploy/validate.sh
set -euo pipefail

cd "$(dirname "$0")/.."
KV_VERSION=1.37.0                         # kubernetes-validate, pinned
K8S_VERSION="${K8S_VERSION:-1.33.0}"      # k8s-openapi's v1_33, the API we target
target="${CARGO_TARGET_DIR:-target}"
venv="$target/validate-venv"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ ! -x "$venv/bin/kubernetes-validate" ]] || ! "$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: $KV_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

cargo build -q -p flotilla
flotilla="$target/debug/flotilla"

# A join token's shape, for rendering only (never redeemed): base64url JSON.
token() {
  local json
  json=$(printf '{"federation":"acme","cluster":"c2","role":"%s","expires_at":4102444800,"server":"flotilla-0.c1.example.com:7400","ca_fingerprint":"%064d","secret":"%s"}' "$1" 0 "$2")
  printf 'flotilla-join.%s' "$(printf '%s' "$json" | base64 -w0 | tr '+/' '-_' | tr -d '=')"
}

declare -A sets=(
  [first-cluster]="--cluster c1 --region us-east --zone us-east-1a --init"
  [first-cluster-ha]="--cluster c1 --region us-east --init --server-replicas 3 --server-advertise flotilla-{ordinal}.c1.example.com:7400 --gateway-address gw.c1.example.com:8443 --storage-class fast-ssd --storage-size 20Gi"
  [custom-namespace-and-image]="--cluster c2 --region ap-south --federation acme --namespace inference --image registry.example.com/flotilla:dev --controller-cpu 250m --controller-memory 512Mi --join $(token server c2s0) --join $(token agent c2a) --join $(token gateway c2g)"
  [joining-istio]="--cluster c2 --region eu-west --federation acme --istio --istio-network c1=network1 --istio-network c2=network2 --namespace gpu-fed --server-replicas 3 --join $(token server c2s0) --join $(token server c2s1) --join $(token agent c2a) --join $(token gateway c2g) --runtime-class= --image registry.example.com/flotilla:dev --server-cpu 2 --server-memory 4Gi --agent-memory 2Gi --gateway-cpu 1.5"
)

status=0
for name in "${!sets[@]}"; do
  # shellcheck disable=SC2086 # the option sets are word lists on purpose
  "$flotilla" install ${sets[$name]} > "$work/$name.yaml"
  "$flotilla" install ${sets[$name]} --output json > "$work/$name.json"
done
if command -v kubectl >/dev/null; then
  for overlay in deploy/kustomize/base deploy/kustomize/overlays/*/; do
    [[ -f "$overlay/kustomization.yaml" ]] || continue
    name="kustomize-$(basename "$overlay")"
    kubectl kustomize "$overlay" > "$work/$name.yaml"
  done
else
  echo "kubectl not found: the kustomize overlays are not built or validated" >&2
fi

for file in "$work"/*.yaml; do
  printf '%s: ' "$(basename "$file")"
  if out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$file" 2>&1); then
    echo "$(grep -c '^kind:' "$file") objects valid"
  else
    echo "INVALID"
    echo "$out"
    status=1
  fi
done

# kubernetes-validate skips a v1/List, so the JSON output is checked to hold exactly
# the objects the YAML output holds (validated above).
for name in "${!sets[@]}"; do
  "$venv/bin/python" - "$work/$name.yaml" "$work/$name.json" <<'PY' || status=1
import json, sys, yaml
with open(sys.argv[1]) as y, open(sys.argv[2]) as j:
    docs, items = list(yaml.safe_load_all(y)), json.load(j)["items"]
if docs != items:
    sys.exit(f"{sys.argv[2]}: the JSON List differs from the YAML documents")
print(f"{sys.argv[2].rsplit('/', 1)[1]}: same {len(items)} objects as the YAML")
PY
done

# The validator must reject: a misspelled field and a wrong type in a copy.
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/; s/publishNotReadyAddresses: true/publishNotReadyAddresses: "yes"/' \
  "$work/first-cluster.yaml" > "$work/broken.manifest"
if "$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$work/broken.manifest" > "$work/broken.out" 2>&1; then
  echo "kubernetes-validate accepted a broken manifest: the check proves nothing" >&2
  status=1
elif ! grep -q terminationGracePeriodSecond "$work/broken.out" || ! grep -q publishNotReadyAddresses "$work/broken.out"; then
  echo "kubernetes-validate rejected the broken manifest for other reasons:" >&2
  cat "$work/broken.out" >&2
  status=1
else
  echo "broken copy: rejected as it should be (misspelled field, wrong type)"
fi
exit "$status"

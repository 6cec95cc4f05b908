#!/usr/bin/env bash
# The walk-through of deploy/README.md as one script: installs Flotilla into several
# Kubernetes clusters of one federation. The first cluster listed starts the
# federation (`--init`); every other one joins it with tokens made here, where the
# federation's CA is (a server's data directory), one per component. Each cluster's
# install is applied the careful way: its namespace first, then a server-side dry run
# of everything, then the apply; a refusal stops the script before that cluster
# changes.
#
#   deploy/install-clusters.sh --federation acme --server flotilla-0.c1.example.com:7400 \
#       --data-dir /var/lib/flotilla/data \
#       c1:us-east:~/.kube/c1 c2:eu-west:~/.kube/c2:4 [-- EXTRA INSTALL FLAGS…]
#
# Each cluster is NAME:REGION:KUBECONFIG[:GPU_NODES] (GPU_NODES, default 1, sizes the
# node token: one join per GPU node's agent, each as its own node). With `--joining`, every
# cluster listed joins (the federation exists already). Flags after `--` go to every
# `flotilla install` (e.g. `--istio --istio-mode ambient`). FLOTILLA and KUBECTL name
# the binaries (default: `flotilla` and `kubectl` on the PATH).
set -euo pipefail

flotilla="${FLOTILLA:-flotilla}"
kubectl="${KUBECTL:-kubectl}"
federation="" server="" data_dir="" first=1
clusters=() extra=()
usage() {
    sed -n '2,19p' "$0" >&2
    exit 2
}
while [[ $# -gt 0 ]]; do
    case "$1" in
    --federation) federation="$2"; shift 2 ;;
    --server) server="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --joining) first=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) echo "unknown flag $1" >&2; usage ;;
    *) clusters+=("$1"); shift ;;
    esac
done
[[ -n "$federation" && -n "$server" && -n "$data_dir" && ${#clusters[@]} -gt 0 ]] || usage

token() { # CLUSTER ROLE USES
    "$flotilla" federation token --server "$server" --data-dir "$data_dir" --ttl 1h \
        --cluster "$1" --role "$2" --uses "$3"
}

for spec in "${clusters[@]}"; do
    IFS=: read -r name region kubeconfig nodes <<<"$spec"
    nodes="${nodes:-1}"
    if [[ -z "$name" || -z "$region" || -z "$kubeconfig" || ! "$nodes" =~ ^[0-9]+$ ]]; then
        echo "$spec: expected NAME:REGION:KUBECONFIG[:GPU_NODES]" >&2
        exit 2
    fi
    args=(install --cluster "$name" --region "$region" --federation "$federation")
    if [[ $first -eq 1 ]]; then
        args+=(--init)
    else
        args+=(--join "$(token "$name" server 1)"
            --join "$(token "$name" agent 1)"
            --join "$(token "$name" node "$nodes")"
            --join "$(token "$name" gateway 1)")
    fi
    manifests=$("$flotilla" "${args[@]}" "${extra[@]}")
    k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
    apply=(apply --server-side --field-manager=flotilla-install -f -)
    echo "$name: the namespace" >&2
    awk '/^---$/ { exit } { print }' <<<"$manifests" | k "${apply[@]}" >&2
    echo "$name: server-side dry run" >&2
    k "${apply[@]}" --dry-run=server <<<"$manifests" >/dev/null
    echo "$name: apply" >&2
    k "${apply[@]}" <<<"$manifests" >&2
    first=0
done

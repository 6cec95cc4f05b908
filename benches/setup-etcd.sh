#!/usr/bin/env bash
# Installs what the registry-vs-etcd benchmark needs, when missing:
#   etcd-server        the peer we compare against (Debian's etcd 3.4)
#   protobuf-compiler  protoc, needed only to build the etcd-client crate
#   libprotobuf-dev    protoc's well-known types (google/protobuf/*.proto), same reason
# The product itself never needs protoc (flotilla-proto compiles with protox).
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -eq 0 ]; then
  echo "etcd and protoc already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# Debian's package may start a system etcd on the default ports; the benchmark runs
# its own members on free ports, so stop the system one if it came up.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop etcd >/dev/null 2>&1 || true; fi
etcd --version | head -1
protoc --version

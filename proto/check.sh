#!/usr/bin/env bash
# buf's checks of proto/ (the real CLI, pinned, from the npm registry; installed once
# under $CARGO_TARGET_DIR, outside the clone): lint (STANDARD and comment rules, with
# the exceptions and their reasons in buf.yaml), formatting, and no breaking change
# to any file since flotilla.v1 was first published.
#
#   proto/check.sh
set -euo pipefail

version=1.50.0
# The commit that introduced flotilla.v1: nothing published since may break it.
published=9d8f71e56e4128c8e924c80f68ceb84e4e2b786a

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}/buf-$version"
buf="$cache/node_modules/.bin/buf"
if [[ ! -x "$buf" ]]; then
    echo "== installing buf $version into $cache"
    npm install --prefix "$cache" --no-audit --no-fund --silent "@bufbuild/buf@$version"
fi

cd "$here"
echo "== buf lint"
"$buf" lint
echo "== buf format"
"$buf" format --diff --exit-code
echo "== buf breaking (against ${published:0:12}, where flotilla.v1 began)"
"$buf" breaking --against "$repo/.git#ref=$published,subdir=proto"
echo "proto/: lint, format and compatibility are clean"

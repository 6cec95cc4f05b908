#!/usr/bin/env bash
# RustSec advisories, offline: cargo-deny against the snapshot of the advisory
# database that build machines carry as a git bundle (they cannot fetch it), at
# $FLOTILLA_ADVISORY_BUNDLE or ../shared/advisory-db/advisory-db.bundle beside the
# clone. The checkout is made once per bundle under $CARGO_TARGET_DIR. Without a
# bundle the check is skipped, and says so.
#
#   .ci/advisories.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="${FLOTILLA_ADVISORY_BUNDLE:-$repo/../shared/advisory-db/advisory-db.bundle}"
if [[ ! -f "$bundle" ]]; then
    echo "SKIPPED: no advisory database snapshot at $bundle (set FLOTILLA_ADVISORY_BUNDLE)"
    exit 0
fi
stamp="$(sha256sum "$bundle" | cut -c1-16)"
db="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}/advisory-db-$stamp"
# cargo-deny 0.20 looks for the default database's checkout under this name.
checkout="$db/advisory-db-3157b0e258782691"
if [[ ! -d "$checkout/.git" ]]; then
    rm -rf "$db"
    mkdir -p "$db"
    git clone -q "$bundle" "$checkout"
fi
echo "advisory database: $(git -C "$checkout" log -1 --format='%h of %cs') (a snapshot: later advisories are not in it)"
config="$(mktemp --suffix=.toml)"
trap 'rm -f "$config"' EXIT
# The repository's deny.toml, pointed at the snapshot.
sed "s|^\[advisories\]|[advisories]\ndb-path = \"$db\"|" "$repo/deny.toml" >"$config"
cd "$repo"
# --offline reads every platform's crates from the local cache: fetch them first.
cargo fetch --locked --quiet
cargo deny --offline --config "$config" check advisories

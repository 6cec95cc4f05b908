"""What the Python end-to-end tests (tests/*/test_*.py) share: the federation
`flotilla up` described in its state directory, and `flotilla ctl` against it.

A test is run as `test_x.py FLOTILLA STATE_DIR`; importing this module reads both.
"""

import json
import os
import subprocess
import sys

FLOTILLA, STATE = sys.argv[1], sys.argv[2]
ENDPOINTS = json.load(open(os.path.join(STATE, "endpoints.json")))
CLUSTERS = ENDPOINTS["clusters"]
GATEWAYS = {c["name"]: c["gateway"] for c in CLUSTERS}


def ctl(*args):
    """`flotilla ctl` as the federation's admin; its standard output."""
    out = subprocess.run(
        [FLOTILLA, "ctl", "--config-dir", ENDPOINTS["admin_dir"],
         "--server", CLUSTERS[0]["server"], *args],
        capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"ctl {args}: exit {out.returncode}: {out.stderr}")
    return out.stdout

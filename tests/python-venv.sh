# Sourced by the Python test runners (tests/*/run.sh): one function that makes a
# virtual environment with pinned packages from PyPI, once, and reuses it while the
# pins are unchanged.
#
#   python_venv VENV PIP_ARGS… -- REQUIREMENT…
#
# Uses $PYTHON (default python3).

python_venv() {
    local venv="$1"
    shift
    local pip_args=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        pip_args+=("$1")
        shift
    done
    shift
    local requirements=("$@")
    local stamp="$venv/flotilla-requirements.txt"
    if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
        echo "== making $venv"
        rm -rf "$venv"
        "${PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --only-binary=:all: "${pip_args[@]}" "${requirements[@]}"
        printf '%s' "${requirements[*]}" >"$stamp"
    fi
}

# shellcheck shell=bash
# Shared by tools/setup.sh and tools/clip-tools: create or update a pinned Python venv under .local/.
#   clipfilter_ensure_venv ref|tools|check   -> sets CLIPFILTER_VENV_PY to the venv's python
# A venv is (re)installed only when tools/requirements-<name>.txt changed (its sha256 is stamped
# inside the venv), so a second call takes milliseconds. All messages go to stderr.

clipfilter_pick_python() {
    local cand v
    for cand in "${PYTHON:-}" python3.11 python3 /usr/bin/python3.11 /usr/bin/python3; do
        [[ -n "$cand" ]] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        v=$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
        if [[ "$v" == "3.11" ]] || [[ "$v" == 3.1[2-9] ]]; then
            echo "$cand"
            return 0
        fi
    done
    echo "error: no python >= 3.11 found (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

clipfilter_ensure_venv() {
    local name="$1"
    local root="${CLIPFILTER_ROOT:?}"
    local dir="$root/.local/venv-$name"
    local req="$root/tools/requirements-$name.txt"
    local stamp="$dir/.clipfilter-requirements.sha256"
    local want py
    [[ -f "$req" ]] || { echo "error: $req not found" >&2; return 1; }
    want=$(sha256sum "$req" | cut -d' ' -f1)
    CLIPFILTER_VENV_PY="$dir/bin/python"
    if [[ -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    if [[ ! -x "$dir/bin/python" ]]; then
        py=$(clipfilter_pick_python) || return 1
        echo "    creating .local/venv-$name with $py ($("$py" --version 2>&1))" >&2
        "$py" -m venv "$dir" >&2 || { echo "error: '$py -m venv' failed (on Debian: apt-get install python3-venv)" >&2; return 1; }
    fi
    echo "    installing tools/requirements-$name.txt into .local/venv-$name" >&2
    if [[ "$name" == "tools" ]]; then
        echo "    (torch from PyPI pulls the CUDA wheels: ~3 GB download, 5.7 GB on disk)" >&2
    fi
    "$dir/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" 1>&2 \
        || { echo "error: pip install -r $req failed" >&2; return 1; }
    echo "$want" > "$stamp"
}

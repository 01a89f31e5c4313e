#!/usr/bin/env bash
# `make lock`: re-resolves pyproject.toml's dependencies (+ the `test` extra, + cluster/lock-extra.in)
# into requirements.lock with pip-compile, keeping the current pins where they still fit
# (UPGRADE=1: the newest that fit). pip-tools lives in a venv of its own in $RVOS_CACHE, pinned.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${RVOS_CACHE:-$HOME/.cache/rvos-ray}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
tools=$cache/lock-tools
pins=(pip==26.3 pip-tools==7.6.2)
if [ "$(cat "$tools/.pins" 2>/dev/null)" != "${pins[*]}" ]; then
  rm -rf "$tools"
  "$python" -m venv "$tools"
  "$tools/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "${pins[*]}" > "$tools/.pins"
fi
start=$(date +%s)
echo "[lock] resolving (a few minutes the first time, hashes are cached after)" >&2
"$tools/bin/python" "$repo/cluster/lock.py" make --pip-compile "$tools/bin/pip-compile" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "[lock] requirements.lock: $(grep -c '^[A-Za-z0-9].*==' "$repo/requirements.lock") packages + $("$python" "$repo/cluster/lock.py" local | tr '\n' ' ')(built here) in $(( $(date +%s) - start )) s" >&2

#!/usr/bin/env bash
# Installs rvos-ray's whole locked stack into this clone's own virtual environment, ./.venv (a real
# directory: two clones never share one). Idempotent: with the lock and this script unchanged it
# returns in a second or two.
#
#   RVOS_CACHE   shared across clones, outside them: the built mmcv wheel (default ~/.cache/rvos-ray)
#   PYTHON       interpreter to build the venv from (default: python3.11, else python3)
#   MAX_JOBS     parallel compiles for mmcv's one-time build (default: the number of cores)
#   RVOS_INSTALLER  uv (default) or pip: what installs the lock
#
# requirements.lock (`make lock`) pins every package with its sha256 hashes; it is installed with
# --require-hashes --no-deps (by uv, itself locked; pip if uv fails), so nothing is resolved here
# and every clone gets the same stack.
# mmcv 2.1.0 (the newest release mmdet 3.3.0 accepts) ships no wheel for this torch: it is
# compiled from its sdist against the installed torch once, the wheel cached in $RVOS_CACHE/wheels
# and installed with --no-deps. Its build asks for -std=c++17 but torch 2.14's headers need C++20:
# a compiler wrapper rewrites the flag. uv's package cache ($RVOS_CACHE/uv, or UV_CACHE_DIR) and
# pip's (~/.cache/pip) are shared by all clones too.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${RVOS_CACHE:-$HOME/.cache/rvos-ray}
venv=$repo/.venv
wheels=$cache/wheels
lock=$repo/requirements.lock
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
# mmcv's compile measured on this project's 2-core machine (77 C++ files, MAX_JOBS=2), minutes:
# 17m19s under other load (README, Install notes)
mmcv_build_minutes_2_cores=18

start=$(date +%s)
log() { printf '[install] %s\n' "$*" >&2; }
took() { local s=$(( $(date +%s) - ${1:-$start} )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
trap 'rc=$?; [ $rc -eq 0 ] || log "FAILED after $(took)"; exit $rc' EXIT

# 1. the lock agrees with pyproject.toml, else stop before touching anything
"$python" "$repo/cluster/lock.py" check || { log "requirements.lock is stale: run \`make lock\`"; exit 1; }

stamp_of() {  # what the installed state depends on: the lock, this script, the interpreter
  { cat "$lock" "$repo/cluster/install.sh" "$repo/cluster/lock.py"; "$python" -VV; } | sha256sum | cut -c1-16
}
stamp=$(stamp_of)

# An older layout linked .venv to a venv shared by all clones: drop the link (not what it points to).
if [ -L "$venv" ]; then
  log "replacing the .venv link ($(readlink "$venv")) with a venv of this clone's own;"
  log "  the shared venv it pointed to is left as it was (remove it to reclaim its space)"
  rm "$venv"
fi
# A venv records its own path (scripts' #! lines, the editable install): a moved clone starts over.
if [ -d "$venv" ] && [ "$(cat "$venv/.rvos-root" 2>/dev/null)" != "$repo" ]; then
  log "the venv was made for $(cat "$venv/.rvos-root" 2>/dev/null || echo 'another install'): recreating it"
  rm -rf "$venv"
fi
freeze() { "$venv/bin/python" -m pip freeze --all --exclude-editable 2>/dev/null; }
if [ -f "$venv/.rvos-stamp" ] && [ "$(cat "$venv/.rvos-stamp")" = "$stamp" ] \
   && freeze | "$python" "$repo/cluster/lock.py" freeze-diff - 2>/dev/null; then
  log "up to date: $venv equals requirements.lock ($(took))"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $("$python" -V)"
  "$python" -m venv "$venv"
  echo "$repo" > "$venv/.rvos-root"
fi
vpy=$venv/bin/python
pip_() {  # pip, minus the noise of this machine's unused extra index locations
  "$vpy" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# 2. the lock, hash-checked, nothing resolved. uv installs it (RVOS_INSTALLER=pip: pip does), uv
# itself first, from the lock, by the venv's pip. uv reads no pip configuration: the package
# sources pip is configured with here (indexes, find-links) are handed to it; the hashes decide
# which files are acceptable, whatever source offers them.
sel=$(mktemp -d)
trap 'rc=$?; rm -rf "$sel"; [ $rc -eq 0 ] || log "FAILED after $(took)"; exit $rc' EXIT
installer=${RVOS_INSTALLER:-uv}
"$python" "$repo/cluster/lock.py" select pip uv > "$sel/tools.txt"
tools=$(grep -o '^[a-z]*==[^ ]*' "$sel/tools.txt")  # pip==..., uv==...
if [ "$(freeze | grep -cxF "$tools")" != 2 ]; then
  pip_ install -q --require-hashes --no-deps -r "$sel/tools.txt"
fi
# packages the lock no longer has (or an older install added) go, so the venv equals the lock
mapfile -t extra < <(freeze | "$python" "$repo/cluster/lock.py" extraneous - | grep -vx -e 'rvos-ray' -e '' || true)
if [ ${#extra[@]} -gt 0 ]; then
  log "removing what the lock does not have: ${extra[*]}"
  pip_ uninstall -q -y "${extra[@]}"
fi
uv_sources() {  # pip's configured package sources (pip config list, env included) as uv options
  local key value v
  "$vpy" -m pip config list 2>/dev/null \
    | sed -n -E "s/^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'\$/\1 \2/p" \
    | while read -r key value; do for v in $value; do printf -- '--%s\n%s\n' "$key" "$v"; done; done
}
t=$(date +%s)
log "installing requirements.lock with $installer ($(grep -c '^[A-Za-z0-9].*==' "$lock") packages, hashes checked)"
if [ "$installer" = uv ]; then
  mapfile -t sources < <(uv_sources)
  # copies, not hard links into uv's cache: this venv shares no file with another clone's
  if ! UV_CACHE_DIR=${UV_CACHE_DIR:-$cache/uv} UV_PYTHON_DOWNLOADS=never "$venv/bin/uv" pip install \
      -q --python "$vpy" --require-hashes --no-deps --link-mode copy \
      --index-strategy unsafe-best-match "${sources[@]}" -r "$lock"; then
    log "uv failed: installing the same lock with pip instead (RVOS_INSTALLER=pip skips uv)"
    installer=pip
  fi
fi
if [ "$installer" = pip ]; then
  pip_ install -q --require-hashes --no-deps -r "$lock"
fi
log "  locked packages in $(took "$t")"

# 3. mmcv: the cached wheel, or build it once (the venv now has torch, mmengine, setuptools, ninja)
mmcv_pin=$("$python" "$repo/cluster/lock.py" local | grep '^mmcv==')
mmcv_version=${mmcv_pin#mmcv==}
mkdir -p "$wheels"
mmcv_wheel=$(ls "$wheels"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$mmcv_wheel" ]; then
  jobs=${MAX_JOBS:-$(nproc)}
  estimate=$(( mmcv_build_minutes_2_cores * 2 / (jobs < $(nproc) ? jobs : $(nproc)) ))
  log "compiling mmcv $mmcv_version's ops (77 C++ files) once: about $estimate min here"
  log "  (measured: $mmcv_build_minutes_2_cores min on 2 cores, more on a busy machine; $(nproc) cores here, MAX_JOBS=$jobs);"
  log "  the wheel is cached in $wheels for every later install and clone"
  build=$(mktemp -d)
  trap 'rc=$?; rm -rf "$sel" "$build"; [ $rc -eq 0 ] || log "FAILED after $(took)"; exit $rc' EXIT
  mkdir -p "$build/bin"
  for cc in gcc g++ c++ cc; do
    real=$(command -v "$cc")
    cat > "$build/bin/$cc" <<WRAP
#!/usr/bin/env bash
args=()
for a in "\$@"; do
  case "\$a" in -std=c++1[147]|-std=gnu++1[147]) a=-std=c++20 ;; esac
  args+=("\$a")
done
exec $real "\${args[@]}"
WRAP
    chmod +x "$build/bin/$cc"
  done
  t=$(date +%s)
  # the sdist by its locked version; its setup.py imports pkg_resources, torch and mmengine
  # (hence --no-build-isolation in this venv)
  pip_ download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$mmcv_version" -d "$build/src"
  set +e
  PATH="$venv/bin:$build/bin:$PATH" CC="$build/bin/gcc" CXX="$build/bin/g++" \
    MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=$jobs \
    "$vpy" -m pip --disable-pip-version-check wheel -v --no-build-isolation --no-deps \
      "$build"/src/mmcv-*.tar.gz -w "$build/out" 2>&1 \
    | "$vpy" -u "$repo/cluster/build_progress.py" --log "$build/build.log" --prefix '[install] ' \
        --estimate-min "$estimate"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ] || ! ls "$build"/out/mmcv-*.whl >/dev/null 2>&1; then
    log "mmcv's build failed (exit $rc); the last lines of its log:"
    tail -n 40 "$build/build.log" >&2
    cp "$build/build.log" "$cache/mmcv-build.log" && log "whole log: $cache/mmcv-build.log"
    exit 1
  fi
  mv "$build"/out/mmcv-*.whl "$wheels/"
  mmcv_wheel=$(ls "$wheels"/mmcv-"$mmcv_version"-*.whl | head -n1)
  log "  mmcv built in $(took "$t"): $mmcv_wheel"
fi
# by name from the wheel folder, not by path: pip freeze then says mmcv==2.1.0, like the lock
if ! freeze | grep -qx "mmcv==$mmcv_version"; then
  pip_ install -q --no-deps --no-index --find-links "$wheels" --force-reinstall "mmcv==$mmcv_version"
fi

# 4. the project itself, editable: this clone's code, in this clone's venv
# (setuptools' warning about editable installs is noise here: its output shows only on failure)
pip_ install -q --no-deps --no-build-isolation -e "$repo" > "$sel/editable.log" 2>&1 \
  || { cat "$sel/editable.log" >&2; exit 1; }

# 5. honest checks: the venv equals the lock, nothing in it lacks a requirement (but mmengine's
# opencv-python, see cluster/lock-extra.in), imports work, and rvos_ray is this clone's
if ! diff=$(freeze | "$python" "$repo/cluster/lock.py" freeze-diff - 2>&1); then
  log "the venv differs from requirements.lock:"; echo "$diff" >&2; exit 1
fi
broken=$("$vpy" -m pip check 2>/dev/null | grep -v -e '^No broken requirements' \
         -e '^mmengine [0-9.]* requires opencv-python, which is not installed' || true)
[ -z "$broken" ] || { log "pip check:"; echo "$broken" >&2; exit 1; }
where=$("$vpy" -c 'import torch, torchvision, mmcv.ops, mmdet, ray, timm, transformers, rvos_ray; print(rvos_ray.__file__)') \
  || { log "import check failed"; exit 1; }
case "$where" in "$repo"/*) ;; *) log "rvos_ray imports from $where, not from $repo"; exit 1 ;; esac
echo "$stamp" > "$venv/.rvos-stamp"
log "done in $(took) ($venv)"

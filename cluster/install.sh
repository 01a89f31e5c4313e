#!/usr/bin/env bash
# Installs rvos-ray's whole stack into a virtual environment kept outside the clone, and links
# it as ./.venv. Idempotent: with nothing changed it returns in seconds.
#
#   RVOS_CACHE   where the venv and built wheels live (default: ~/.cache/rvos-ray)
#   PYTHON       interpreter to build the venv from (default: python3.11, else python3)
#
# mmcv 2.1.0 (the newest release mmdet 3.3.0 accepts) ships no wheel for this torch, so it is
# compiled from its sdist against the installed torch, once, and the wheel is cached. Its build
# asks for -std=c++17 but torch 2.14's headers need C++20: a compiler wrapper rewrites the flag.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${RVOS_CACHE:-$HOME/.cache/rvos-ray}
venv=$cache/venv
wheels=$cache/wheels
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
mmcv_version=2.1.0
torch_pins=(torch==2.14.1 torchvision==0.29.1)

log() { printf '[install] %s\n' "$*" >&2; }

stamp_of() {  # what the installed state depends on: the dependency list, this script, the clone
  { cat "$repo/pyproject.toml" "$repo/cluster/install.sh"; echo "$repo"; } | sha256sum | cut -c1-16
}

mkdir -p "$cache" "$wheels"
ln -sfn "$venv" "$repo/.venv"
stamp=$(stamp_of)
if [ -f "$venv/.rvos-stamp" ] && [ "$(cat "$venv/.rvos-stamp")" = "$stamp" ] \
   && "$venv/bin/python" -c 'import rvos_ray' 2>/dev/null; then
  log "up to date ($venv)"
  exit 0
fi

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv at $venv with $python"
  "$python" -m venv "$venv"
fi
pip_() {  # pip, minus the noise of this machine's unused extra index locations
  "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip=(pip_)
"${pip[@]}" install -q --upgrade pip 'setuptools<81' wheel ninja

# torch first: mmcv compiles against it and every later resolve must keep this pair.
"${pip[@]}" install -q "${torch_pins[@]}"

mmcv_wheel=$(ls "$wheels"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$mmcv_wheel" ]; then
  log "building mmcv $mmcv_version with compiled ops (about 10 minutes on 2 cores; cached after)"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
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
  # mmcv's setup.py imports pkg_resources (setuptools<81) and mmengine: no build isolation.
  "${pip[@]}" install -q 'mmengine>=0.10,<0.11'
  "${pip[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$mmcv_version" -d "$build/src"
  PATH="$build/bin:$PATH" CC="$build/bin/gcc" CXX="$build/bin/g++" \
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
    "${pip[@]}" wheel -q --no-build-isolation --no-deps "$build"/src/mmcv-*.tar.gz -w "$build/out"
  mv "$build"/out/mmcv-*.whl "$wheels/"
  mmcv_wheel=$(ls "$wheels"/mmcv-"$mmcv_version"-*.whl | head -n1)
fi

log "installing the project and its dependencies"
"${pip[@]}" install -q "$mmcv_wheel" "${torch_pins[@]}" -e "$repo[test]" --no-build-isolation
# mmengine pulls opencv-python beside the headless build; both own cv2/, keep only headless.
if "${pip[@]}" show -q opencv-python >/dev/null 2>&1; then
  "${pip[@]}" uninstall -q -y opencv-python
  "${pip[@]}" install -q --force-reinstall --no-deps "opencv-python-headless<5"
fi
"$venv/bin/python" -c 'import torch, torchvision, mmcv.ops, mmdet, ray, timm, transformers, rvos_ray' \
  || { log "import check failed"; exit 1; }
echo "$stamp" > "$venv/.rvos-stamp"
log "done in $(( $(date +%s) - start )) s ($venv)"

#!/usr/bin/env python3
"""requirements.lock: the project's whole resolved stack, exact versions and sha256 hashes.

    python cluster/lock.py make --pip-compile PATH   write requirements.lock (what `make lock` runs)
    python cluster/lock.py check                     fail unless the lock agrees with pyproject.toml
    python cluster/lock.py select NAME...            print the named packages' lock entries
    python cluster/lock.py local                     print the `#!local` pins (mmcv==2.1.0)
    python cluster/lock.py freeze-diff FREEZE        compare a `pip freeze --all` with the lock
    python cluster/lock.py extraneous FREEZE         names installed but neither locked nor local

The lock's input is pyproject.toml's `dependencies`, its `test` extra and cluster/lock-extra.in,
minus the packages built here (`#!local`, installed from a cached wheel) and the ones dropped
(`#!exclude`). pip-compile resolves it with hashes; the lock's header records a sha256 of the
input, so a dependency edited in pyproject.toml without `make lock` fails `check` by name.

Runs on the interpreter that builds the venv (stdlib only; `packaging` from pip if not installed).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ModuleNotFoundError:  # a bare interpreter: pip vendors the same library
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
EXTRA = ROOT / "cluster" / "lock-extra.in"
EXTRAS = ("test",)  # pyproject extras that are locked (and installed)
INPUT_NAME = "pyproject.toml+cluster/lock-extra.in"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?\s*$")


class LockError(Exception):
    pass


def _directives(text: str, key: str) -> list[str]:
    return [line.split(None, 1)[1].strip() for line in text.splitlines()
            if line.startswith(f"#!{key} ")]


def lock_input(root: Path = ROOT) -> tuple[str, list[Requirement], list[str]]:
    """The text pip-compile resolves, the `#!local` pins, the `#!exclude` names (canonical)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extra_text = (root / "cluster" / "lock-extra.in").read_text()
    local = [Requirement(r) for r in _directives(extra_text, "local")]
    exclude = [canonicalize_name(n) for n in _directives(extra_text, "exclude")]
    local_names = {canonicalize_name(r.name) for r in local}
    lines = [f"# requires-python {project.get('requires-python', '')}"]
    groups = [("dependencies", project.get("dependencies", []))]
    groups += [(f"extra {e}", project.get("optional-dependencies", {}).get(e, [])) for e in EXTRAS]
    for label, reqs in groups:
        lines.append(f"# pyproject.toml {label}")
        lines += [r.strip() for r in reqs if canonicalize_name(Requirement(r).name) not in local_names]
    lines.append("# cluster/lock-extra.in")
    lines += [ln.strip() for ln in extra_text.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join(lines) + "\n", local, exclude


def input_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_lock(path: Path = LOCK) -> dict:
    """{'pins': {canonical name: (name, version, marker)}, 'digest': str, 'local': [...]}"""
    if not path.exists():
        raise LockError(f"{path.name} is missing: run `make lock`")
    pins, digest, local = {}, None, []
    for line in path.read_text().splitlines():
        if line.startswith("# input-sha256: "):
            digest = line.split(": ", 1)[1].strip()
        elif line.startswith("# local: "):
            local.append(line.split(": ", 1)[1].strip())
        elif line and not line[0].isspace() and not line.startswith("#"):
            m = _PIN.match(line)
            if not m:
                raise LockError(f"{path.name}: cannot read the line {line!r}")
            pins[canonicalize_name(m[1])] = (m[1], m[2], m[3])
    return {"pins": pins, "digest": digest, "local": local}


def check(root: Path = ROOT, lock_path: Path | None = None) -> list[str]:
    """Every way the lock disagrees with pyproject.toml + lock-extra.in (empty: they agree)."""
    text, local, exclude = lock_input(root)
    lock = parse_lock(lock_path or root / "requirements.lock")
    problems = []
    if lock["digest"] != input_digest(text):
        problems.append("pyproject.toml's dependencies (or cluster/lock-extra.in) changed since "
                        "requirements.lock was made")
    if sorted(lock["local"]) != sorted(str(r) for r in local):
        problems.append(f"local builds: lock has {lock['local']}, lock-extra.in {[str(r) for r in local]}")
    pins = lock["pins"]
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(Version(pins[name][1]), prereleases=True):
            problems.append(f"{req} is locked at {pins[name][1]}")
    for name in exclude:
        if name in pins:
            problems.append(f"{name} is excluded (#!exclude) but locked")
    # pyproject's requirements on the local builds must admit the version built here
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r)
              for r in project.get("dependencies", [])}
    for pin in local:
        req = wanted.get(canonicalize_name(pin.name))
        version = next(iter(pin.specifier)).version
        if req is not None and not req.specifier.contains(Version(version), prereleases=True):
            problems.append(f"pyproject.toml's {req} does not admit the local build {pin}")
    return problems


def select(names: list[str], path: Path = LOCK) -> str:
    """The lock's entries (pin line + hash lines) for the named packages, as a requirements file."""
    want = {canonicalize_name(n) for n in names}
    out, keep = [], False
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            keep = canonicalize_name(_PIN.match(line)[1]) in want
        elif line.startswith("#"):
            keep = False
        if keep and not line.lstrip().startswith("#"):
            out.append(line)
    found = {canonicalize_name(_PIN.match(ln)[1]) for ln in out if not ln[0].isspace()}
    if found != want:
        raise LockError(f"not in the lock: {sorted(want - found)}")
    return "\n".join(out).rstrip(" \\") + "\n"


def _freeze(text: str) -> dict:
    got = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ")):
            continue
        if " @ " in line:  # installed from a file or URL: no version to compare
            name, url = line.split(" @ ", 1)
            got[canonicalize_name(name)] = (name, f"@ {url.strip()}")
        elif "==" in line:
            name, version = line.split("==", 1)
            got[canonicalize_name(name)] = (name, version.strip())
    return got


def expected(path: Path = LOCK) -> dict:
    lock = parse_lock(path)
    want = {}
    for name, (_, version, marker) in lock["pins"].items():
        if marker:
            from_marker = Requirement(f"x; {marker}").marker
            if from_marker is not None and not from_marker.evaluate():
                continue
        want[name] = version
    for pin in lock["local"]:
        req = Requirement(pin)
        want[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return want


def freeze_diff(freeze_text: str, path: Path = LOCK) -> list[str]:
    """How a venv's `pip freeze --all --exclude-editable` differs from the lock (empty: equal)."""
    want, got = expected(path), _freeze(freeze_text)
    problems = []
    for name, version in sorted(want.items()):
        if name not in got:
            problems.append(f"{name}=={version} is locked but not installed")
        elif got[name][1].startswith("@") or Version(got[name][1]) != Version(version):
            problems.append(f"{name} is {got[name][1]}, locked {version}")
    for n in sorted(set(got) - set(want)):
        name, version = got[n]
        problems.append(f"{name}{' ' if version.startswith('@') else '=='}{version} is installed but not locked")
    return problems


def extraneous(freeze_text: str, path: Path = LOCK) -> list[str]:
    want = expected(path)
    return sorted(name for name, _ in _freeze(freeze_text).values() if canonicalize_name(name) not in want)


def make(pip_compile: str, upgrade: bool = False, root: Path = ROOT) -> None:
    """Resolve the lock input with pip-compile (hashes, pip/setuptools included) and write the lock."""
    text, local, exclude = lock_input(root)
    lock_path = root / "requirements.lock"
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "lock.in", Path(tmp) / "lock.txt"
        src.write_text(text)
        if lock_path.exists() and not upgrade:  # the old pins are preferences: minimal changes
            shutil.copy(lock_path, out)
        cmd = [pip_compile, "--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras",
               "--no-emit-index-url", "--no-emit-find-links", "--no-header", "--newline", "lf",
               "--output-file", str(out), str(src)] + (["--upgrade"] if upgrade else [])
        subprocess.run(cmd, check=True, cwd=root)
        body = out.read_text().replace(f"-r {src}", f"-r {INPUT_NAME}")
    entries, dropped, current, skip = [], [], [], False
    for line in body.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = canonicalize_name(_PIN.match(line)[1])
            skip = name in exclude
            if skip:
                dropped.append(line.split()[0])
        elif line.startswith("#") and not line.startswith("#   "):
            skip = False
        if not skip:
            current.append(line)
    entries = current
    header = [
        "# The whole resolved stack of rvos-ray, exact versions and sha256 hashes, for CPython",
        f"# {sys.version_info.major}.{sys.version_info.minor} on Linux x86_64. Made by `make lock` "
        "(cluster/lock.py + pip-compile); installed by",
        "# `make install` (pip install --require-hashes --no-deps). Do not edit by hand.",
        f"# input-sha256: {input_digest(text)}",
    ]
    header += [f"# local: {r}" for r in local]
    header += [f"# excluded: {d} (cluster/lock-extra.in says why)" for d in dropped]
    lock_path.write_text("\n".join(header + [""] + entries).rstrip("\n") + "\n")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "make":
            pip_compile = args[args.index("--pip-compile") + 1] if "--pip-compile" in args else "pip-compile"
            make(pip_compile, upgrade="--upgrade" in args or os.environ.get("UPGRADE") == "1")
            problems = check()
            for p in problems:
                print(f"lock: {p}", file=sys.stderr)
            return 1 if problems else 0
        if cmd == "check":
            problems = check()
            if problems:
                print("requirements.lock does not agree with pyproject.toml:", file=sys.stderr)
                for p in problems:
                    print(f"  - {p}", file=sys.stderr)
                print("Run `make lock` and commit requirements.lock.", file=sys.stderr)
                return 1
            return 0
        if cmd == "select":
            sys.stdout.write(select(args))
            return 0
        if cmd == "local":
            print("\n".join(parse_lock()["local"]))
            return 0
        if cmd in ("freeze-diff", "extraneous"):
            text = Path(args[0]).read_text() if args and args[0] != "-" else sys.stdin.read()
            if cmd == "extraneous":
                sys.stdout.write("".join(f"{name}\n" for name in extraneous(text)))
                return 0
            problems = freeze_diff(text)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1 if problems else 0
    except LockError as e:
        print(f"lock: {e}", file=sys.stderr)
        return 1
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Turns a verbose build's output (pip -v running a torch extension build under ninja) into
progress: one line per compiled file, `[23/77] pytorch/cpu/roi_align.cpp  5:04 elapsed, ~12 min
left` (the time left from the rate so far, from --estimate-min before that), and a heartbeat while nothing new has printed for a minute (the link step, packing the
wheel). Everything read goes to --log; when the build fails, the caller prints its tail.

    pip wheel -v ... 2>&1 | python cluster/build_progress.py --log build.log [--prefix '[install] ']
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
import time

STEP = re.compile(r"^\[(\d+)/(\d+)\]\s+(.*)$")
SOURCE = re.compile(r"(\S+\.(?:cpp|cc|cxx|cu|c))(?=\s|$)")


def source_of(command: str) -> str:
    """The file a ninja step compiles, shortened to what follows csrc/ (names repeat across dirs)."""
    files = SOURCE.findall(command)
    if not files:
        return command.split()[0].rsplit("/", 1)[-1] if command.split() else "?"
    path = files[-1]
    for i, tok in enumerate(command.split()):  # prefer the argument of -c
        if tok == "-c" and i + 1 < len(command.split()) and SOURCE.fullmatch(command.split()[i + 1]):
            path = command.split()[i + 1]
    return path.split("csrc/", 1)[1] if "csrc/" in path else path.rsplit("/", 1)[-1]


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, out, prefix: str = "", heartbeat: float = 60.0, now=time.monotonic,
                 estimate_min: float | None = None):
        self.out, self.prefix, self.heartbeat, self.now = out, prefix, heartbeat, now
        self.start = self.last_print = now()
        self.estimate = estimate_min * 60 if estimate_min else None
        self.steps = 0
        self.first = None  # (time, step) of the first step seen: the rate is measured from it
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(f"{self.prefix}{text}\n")
            self.out.flush()
            self.last_print = self.now()

    def feed(self, line: str) -> None:
        m = STEP.match(line.strip())
        if not m:
            return
        done, total = int(m[1]), int(m[2])
        self.steps = done
        now = self.now()
        elapsed = now - self.start
        if self.first is None:
            self.first = (now, done)
        t0, d0 = self.first
        left = None
        if done - d0 >= 4:  # a measured rate
            left = (now - t0) / (done - d0) * (total - done)
        elif self.estimate is not None:  # the estimate, until there is one
            left = self.estimate - elapsed
        left = f", ~{max(1, round(left / 60))} min left" if left is not None and done < total else ""
        self.say(f"  [{done}/{total}] {source_of(m[3])}  {clock(elapsed)} elapsed{left}")

    def beat(self) -> None:
        if self.now() - self.last_print >= self.heartbeat:
            what = "linking and packing the wheel" if self.steps else "preparing the build"
            self.say(f"  ... {what}, {clock(self.now() - self.start)} elapsed")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--heartbeat", type=float, default=60.0)
    ap.add_argument("--estimate-min", type=float, help="the expected build time, until measured")
    args = ap.parse_args(argv)
    progress = Progress(sys.stderr, args.prefix, args.heartbeat, estimate_min=args.estimate_min)
    stop = threading.Event()

    def ticker():
        while not stop.wait(5):
            progress.beat()

    threading.Thread(target=ticker, daemon=True).start()
    with open(args.log, "w", encoding="utf-8", errors="replace") as log:
        for line in iter(sys.stdin.readline, ""):
            log.write(line)
            log.flush()
            progress.feed(line)
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())

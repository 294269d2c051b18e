"""Summarize a ``py-spy record --format raw --threads`` profile: per thread, the functions
with the most inclusive and self samples, optionally only under frames matching ``--under``.

    python bench/reconciler_trace/pyspy_report.py PROFILE.txt [--rate 100] [--top 25]
        [--thread sylphx-reconciler] [--under Reconciler._launch] [--children Reconciler._pass]

``--children F`` also splits the samples under the first frame containing F by the line of F
they were at (``F:LINE -> callee``): where in F the time went.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r" \(([^()]*):\d+\)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``: one entry per function."""
    match = _LINE.search(frame)
    if match is None:
        return frame
    return f"{frame[: match.start()]} ({match.group(1).rsplit('/', 1)[-1]})"


def load(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread, frames root first, samples) per distinct stack."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        if thread.startswith("AnyIO worker") or thread.startswith("ThreadPool"):
            thread = "API worker threads"
        out.append((thread, [f for f in frames[1:] if not f.startswith("process ")], int(count)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rate", type=float, default=100.0, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only this thread (e.g. sylphx-reconciler)")
    parser.add_argument("--under", help="only stacks through a frame containing this")
    parser.add_argument("--children", help="split the time under this frame by its lines")
    args = parser.parse_args()
    stacks = load(args.profile)
    threads: Counter[str] = Counter()
    for thread, _, n in stacks:
        threads[thread] += n
    print("seconds on CPU (or waiting for the GIL) per thread:")
    for thread, n in threads.most_common():
        print(f"  {n / args.rate:8.2f}  {thread}")
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    children: Counter[str] = Counter()
    total = 0
    for thread, frames, n in stacks:
        if args.thread and thread != args.thread:
            continue
        names = [frame_name(f) for f in frames]
        if args.under:
            hits = [i for i, f in enumerate(frames) if args.under in f]
            if not hits:
                continue
            names = names[hits[0] :]
        total += n
        if args.children:
            at = [i for i, f in enumerate(frames) if args.children in f]
            if at:
                i = at[0]
                line = frames[i].rsplit(":", 1)[-1].rstrip(")")
                callee = frame_name(frames[i + 1]) if i + 1 < len(frames) else "(self)"
                children[f"line {line} -> {callee}"] += n
        for name in set(names):
            inclusive[name] += n
        if names:
            own[names[-1]] += n
    scope = f"{args.thread or 'all threads'}{f', under {args.under}' if args.under else ''}"
    print(f"\n{scope}: {total / args.rate:.2f} s")
    if children:
        print(f"\nunder {args.children}, by its line and callee:")
        for name, n in children.most_common(args.top):
            print(f"  {n / args.rate:8.2f}  {100 * n / max(total, 1):5.1f}%  {name}")
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"\ntop {args.top} by {title} seconds:")
        for name, n in counts.most_common(args.top):
            print(f"  {n / args.rate:8.2f}  {100 * n / max(total, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()

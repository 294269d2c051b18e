#!/usr/bin/env bash
# Before/after in one run: each benchmark at REV (a git worktree, its own bench/ and src/)
# and at the working tree, back to back, so both see the same machine and the same noise.
#
#   bench/ab.sh REV [BENCH ARGS...]      e.g. bench/ab.sh 24761f4
#
# BENCHES (env) picks the benchmarks and their arguments, one "script args..." per line.
# Both trees run with this tree's virtualenv; the older one is put first on PYTHONPATH,
# which the control plane's subprocesses (server, supervisors) inherit.
set -euo pipefail
rev=${1:?usage: bench/ab.sh REV}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
before=$(mktemp -d /tmp/sylphx-ab.XXXXXX)
trap 'git -C "$root" worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add --detach "$before" "$rev" >/dev/null
: "${BENCHES:=p1_fanout.py --rounds 10
p2_gang.py --rounds 10
p3_get_run.py --seconds 5 --connections 1 16 --workers 1
p4_logs.py --rounds 2
p5_scale.py --sizes 100,1000 --runs 20 --sandboxed 0}"
echo "# A/B: before = $rev ($(git -C "$root" rev-parse --short "$rev")), after = $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+changes')"
while IFS= read -r line; do
  [ -n "$line" ] || continue
  read -r -a args <<<"$line"
  for side in before after; do
    if [ "$side" = before ]; then tree=$before; else tree=$root; fi
    echo; echo "## ${args[0]} -- $side"
    (cd "$tree/bench" && PYTHONPATH="$tree/src" "$py" "${args[@]}") || echo "(failed: $side ${args[*]})"
  done
done <<<"$BENCHES"

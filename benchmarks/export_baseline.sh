#!/usr/bin/env bash
# The library source of git revision REV (default HEAD~1) into the git-ignored .baseline/src: gpu_checks.sh then
# times the library's network from it beside the working tree's, in the same device call (carry ".baseline").
#   bash benchmarks/export_baseline.sh a6bd4bb
set -euo pipefail
rev=${1:-HEAD~1}
rm -rf .baseline
mkdir -p .baseline
git archive "$rev" src | tar -x -C .baseline
echo "$(git rev-parse --short "$rev") $(git log -1 --format=%s "$rev" | cut -c1-80)" > .baseline/REVISION
echo "wrote .baseline/src from $(cat .baseline/REVISION)"

#!/usr/bin/env bash
# Export the official mamba_ssm package's Python files into the git-ignored .anchors/ folder, for the side-by-side
# rows of benchmarks/gpu.py (MAMBA_SSM_SRC=.anchors, and `carry` .anchors to the GPU machine). Read-only use: never
# commit it (.gitignore has /.anchors/).
#
#   bash benchmarks/export_anchors.sh /work/.mirror/state-spaces+mamba/repo     # the git dir `fetch` returned
set -euo pipefail
src=${1:?usage: export_anchors.sh <git dir of state-spaces/mamba, from the fetch tool>}
dest=$(git rev-parse --show-toplevel)/.anchors
git -C "$src" rev-parse --verify -q HEAD >/dev/null || { echo "not a git dir with a HEAD: $src" >&2; exit 1; }
rm -rf "$dest" && mkdir -p "$dest"
# Python files only: the CUDA extension's sources are not needed (its Triton path is what gpu.py measures).
git -C "$src" archive HEAD mamba_ssm | tar -x -C "$dest" --wildcards '*.py'
echo "$(git -C "$src" rev-parse HEAD) state-spaces/mamba" > "$dest/REVISION"
echo "exported $(find "$dest" -name '*.py' | wc -l) files of mamba_ssm at $(cut -c1-12 "$dest/REVISION") into $dest"

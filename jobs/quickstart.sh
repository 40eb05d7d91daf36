#!/usr/bin/env bash
# quickstart.sh: the README's main command.  On a fresh Debian 12 machine as root: install what is missing, build
# mednet (Release), build the default real-data corpus from Debian's mricron-data with 2 MPI ranks, and pre-train
# on it with 2 MPI ranks (a few minutes on 2 cores).  Re-running resumes from the last checkpoint and, once the
# configured steps are done, just reports them.
#
#   bash jobs/quickstart.sh                       # everything under ./run
#   MEDNET_OUT=/scratch/me/run NP=4 bash jobs/quickstart.sh train.steps=500
#
# Extra arguments are config overrides for `mednet pretrain` (section.key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${MEDNET_OUT:-$root/run}
np=${NP:-2}

bash .ci/install-deps
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$(nproc)"

mpi=(mpirun -n "$np" --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$out"
if [ ! -f "$out/corpus_mricron.h5" ]; then
  echo "== building the corpus from /usr/share/mricron/templates"
  "${mpi[@]}" build/mednet prep configs/corpus_mricron.ini --output "$out/corpus_mricron.h5"
fi
echo "== pre-training on $np ranks"
"${mpi[@]}" build/mednet pretrain configs/pretrain_mricron.ini corpus.path="$out/corpus_mricron.h5" \
  train.out_dir="$out/pretrain" "$@"
echo "== corpus:      $out/corpus_mricron.h5"
echo "== checkpoints: $out/pretrain/ (newest: $(cat "$out/pretrain/latest" 2>/dev/null || echo none))"
echo "== metrics:     $out/pretrain/metrics.jsonl"

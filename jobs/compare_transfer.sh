#!/usr/bin/env bash
# compare_transfer.sh: does pre-training pay off?  Fine-tune the target task from scratch and from a pre-trained
# encoder, K seeds each, the same steps and evaluations, then tabulate and plot the held-out Dice of every run.
#
#   jobs/compare_transfer.sh ENCODER CORPUS OUT [section.key=value ...]
#
#   ENCODER  the pre-trained encoder: a checkpoint (ckpt-<step>.h5) or a .safetensors file (train.init_encoder)
#   CORPUS   the prepared corpus holding the target dataset (corpus.path)
#   OUT      one folder per arm and seed: OUT/scratch/seed<k>/, OUT/pretrained/seed<k>/ (metrics.jsonl,
#            checkpoints, log.txt), and OUT/summary/ (table.txt, table.csv, summary.json, dice.png)
#   extra arguments are config overrides for every run (both arms alike)
#
# Environment (defaults in brackets):
#   SEEDS [3]        runs per arm; seed k sets model.seed = k (the head's and, from scratch, the encoder's
#                    initialisation) and sampler.seed = 100 + k (the crops); arm "pretrained" seed k and arm
#                    "scratch" seed k see the same crops
#   STEPS [60]       fine-tuning steps per run;  EVAL_EVERY [10]: evaluation every N steps (train.eval_every)
#   HOLDOUT [0.3]    sampler.holdout: the last share of the target volume along D is never trained on and is all
#                    that evaluation scores (held-out Dice);  EVAL_BATCHES [4]: train.eval_batches
#   THRESHOLD [0.3]  the Dice for the "steps to T" column
#   CONFIG [configs/finetune_mricron.ini]   MEDNET [build/mednet]   NP [2]: ranks per run
#   LAUNCH           the launcher prefix; default `mpirun -n $NP --oversubscribe --bind-to none` (plus
#                    --allow-run-as-root as root).  Under Slurm, inside an allocation: LAUNCH=srun, e.g.
#                      sbatch -n 2 -c 1 -t 2:00:00 --wrap "LAUNCH=srun jobs/compare_transfer.sh ENC CORPUS OUT"
#                    (the runs go one after another in the allocation; each srun uses all its tasks)
#
# A finished run folder is kept and its run only reports (mednet resumes from `latest`), so an interrupted
# comparison is completed by running the same command again.  Exit status: 1 when a run or the collector fails
# (naming it), 2 for bad arguments.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
usage() { sed -n '5,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 3 ] || usage
encoder=$1 corpus=$2 out=$3
shift 3
[ -f "$encoder" ] || { echo "compare_transfer: encoder '$encoder' not found" >&2; exit 2; }
[ -f "$corpus" ] || { echo "compare_transfer: corpus '$corpus' not found" >&2; exit 2; }
seeds=${SEEDS:-3} steps=${STEPS:-60} eval_every=${EVAL_EVERY:-10} holdout=${HOLDOUT:-0.3}
eval_batches=${EVAL_BATCHES:-4} threshold=${THRESHOLD:-0.3}
config=${CONFIG:-$root/configs/finetune_mricron.ini}
mednet=${MEDNET:-$root/build/mednet}
np=${NP:-2}
for v in seeds steps eval_every; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "compare_transfer: ${v^^} must be a positive integer, got '${!v}'" >&2; exit 2; }
done
if [ -n "${LAUNCH:-}" ]; then
    read -r -a launch <<< "$LAUNCH"
else
    launch=(mpirun -n "$np" --oversubscribe --bind-to none)
    [ "$(id -u)" -eq 0 ] && launch+=(--allow-run-as-root)
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
t_all=$SECONDS
for k in $(seq 1 "$seeds"); do
    for arm in scratch pretrained; do
        run=$out/$arm/seed$k
        mkdir -p "$run"
        init=""
        [ "$arm" = pretrained ] && init=$encoder
        t0=$SECONDS
        if ! "${launch[@]}" "$mednet" finetune "$config" corpus.path="$corpus" train.out_dir="$run" \
                train.init_encoder="$init" train.steps="$steps" train.eval_every="$eval_every" \
                train.eval_batches="$eval_batches" train.checkpoint_every=0 train.log_every="$eval_every" \
                sampler.holdout="$holdout" model.seed="$k" sampler.seed=$((100 + k)) "$@" > "$run/log.txt" 2>&1; then
            tail -n 20 "$run/log.txt" >&2
            echo "compare_transfer: the $arm run of seed $k failed (log: $run/log.txt)" >&2
            exit 1
        fi
        echo "== $arm seed $k: $(grep -o 'eval (trained[^]]*]' "$run/log.txt" | tail -n 1) ($((SECONDS - t0)) s)"
    done
done
echo "== $((2 * seeds)) runs of $steps steps in $((SECONDS - t_all)) s"
python3 "$root/benchmarks/compare_collect.py" "$out" --threshold "$threshold"

#!/bin/bash
# run_classify_test.sh CASE MEDNET SRCDIR WORKDIR MPIEXEC: classification fine-tuning on data made from mricron-data
# (tests/train/make_cls_data.py: class 0 = Colin27 T1, class 1 = the same with the brain's contrast inverted, 4
# subjects each).
#   train    prep (2 ranks), then a short `model.head = cls` fine-tune on 1 and on 2 ranks (2 ranks with
#            synchronised batch norm: each rank's shard holds one class here, and per-rank statistics would normalise
#            the class away; the run warns about it): the training loss falls, and the held-out accuracy
#            (sampler.holdout: crops centred in the top slab of every volume, never labelled in training) ends clearly
#            above chance (>= 0.75 on two classes).  (Per-step losses of 1 and 2 ranks are not compared: the sampler
#            draws from (seed, rank, step), so P changes which crops a step sees; the contract holds in expectation.)
#   badcsv   a subject without a row, a label outside 0..K-1 and a non-integer label: each one error naming the CSV
#            (and the row), non-zero exit, no corpus; model.head = seg on a classification corpus is refused.
set -u
CASE=$1 MEDNET=$2 SRC=$3 WORK=$4 MPIEXEC=$5
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
. "$(dirname "${BASH_SOURCE[0]}")/../lib/workdir.sh"
mn_workdir "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
python3 "$SRC/tests/train/make_cls_data.py" data 4 || fail "cannot make the data"

def() { # def CSV: the corpus definition
    cat <<EOT
[corpus]
name = skull
output = skull.h5
root = $WORK/data
spacing = 4
[skull]
image = img/*.nii.gz
label = lab/*.nii.gz
role = target
task = classification
class_labels = $1
classes = skull, stripped
label_map = 0:0, 1-255:1
EOT
}

cfg() { # cfg OUT HEAD: the fine-tuning configuration
    cat <<EOT
[corpus]
path = $WORK/skull.h5
role = target
[model]
depth = 10
head = $2
seed = 1
[sampler]
crop = 24
fg_share = 0.5
holdout = 0.3
seed = 3
[train]
steps = 60
batch = 4
out_dir = $1
checkpoint_every = 0
log_every = 1
eval_batches = 16
[optim]
kind = adam
lr = 0.003
head_lr_mult = 1
EOT
}

case "$CASE" in
train)
    def "$WORK/data/labels.csv" > skull.ini
    timeout 120 $MPIEXEC -n 2 "$MEDNET" prep skull.ini --force > prep.log 2>&1 || { cat prep.log; fail "prep"; }
    h5dump -a /skull/task skull.h5 | grep -q classification || fail "no task attribute"
    h5dump -a /skull/vol_0007/class skull.h5 | grep -q "(0): 1" || fail "vol_0007 should be class 1"
    for np in 1 2; do
        cfg run$np cls > ft.ini
        sbn=false; [ $np -gt 1 ] && sbn=true
        timeout 150 $MPIEXEC -n $np "$MEDNET" finetune ft.ini train.sync_bn=$sbn > ft$np.log 2>&1 || { cat ft$np.log; fail "finetune on $np rank(s)"; }
    done
    cfg run2w cls > ft.ini
    timeout 60 $MPIEXEC -n 2 "$MEDNET" finetune ft.ini train.steps=1 > ftw.log 2>&1 || { cat ftw.log; fail "1 step on 2 ranks"; }
    grep -q "warning: a classifier on 2 ranks with per-rank batch norm" ftw.log || fail "no per-rank batch norm warning"
    grep "accuracy" ft1.log | tail -2
    python3 - <<'EOP' || fail "see above"
import json, sys
def load(p):
    return [json.loads(l) for l in open(p)]
m1, m2 = load("run1/metrics.jsonl"), load("run2/metrics.jsonl")
for name, m in (("1 rank", m1), ("2 ranks", m2)):
    l = [r["loss"] for r in m if "loss" in r]
    a, b = sum(l[:10]) / 10, sum(l[-10:]) / 10
    print("%s: mean loss of the first 10 steps %.3f, of the last 10 %.3f" % (name, a, b))
    if len(l) != 60 or not b < a / 2:
        sys.exit("%s: the training loss did not fall by half" % name)
for name, m in (("1 rank", m1), ("2 ranks", m2)):
    ev = [r for r in m if r.get("eval") == "trained"]
    if not ev or "accuracy" not in ev[-1]:
        sys.exit("%s: no trained accuracy in metrics.jsonl" % name)
    a, b = ev[-1]["mean_accuracy"], ev[-1]["mean_mean_class_accuracy"]
    print("%s: held-out accuracy %.3f, mean per-class accuracy %.3f" % (name, a, b))
    if not (a >= 0.75 and b >= 0.75):
        sys.exit("%s: held-out accuracy below 0.75" % name)
EOP
    ;;
badcsv)
    bad() { # bad WHAT CSVTEXT PATTERN
        printf "$2" > "$1.csv"
        def "$WORK/$1.csv" > "$1.ini"
        timeout 60 $MPIEXEC -n 2 "$MEDNET" prep "$1.ini" --output "$1.h5" > "$1.log" 2>&1 && fail "$1: prep succeeded"
        grep -q "$3" "$1.log" || { cat "$1.log"; fail "$1: no message matching '$3'"; }
        [ "$(grep -c "$3" "$1.log")" = 1 ] || { cat "$1.log"; fail "$1: the error is printed more than once"; }
        [ ! -e "$1.h5" ] || fail "$1: a corpus was written"
        echo "ok: $1: $(grep "$3" "$1.log" | head -1)"
    }
    all=$(cd data/img && ls | sed 's/.nii.gz//')
    rows() { for s in $all; do echo "$s,${s:1:1}"; done; }
    bad missing "$(rows | grep -v s1_02)\n" "class_labels .*missing.csv: no row for subject 's1_02'"
    bad range "$(rows | sed 's/^s1_01,1/s1_01,2/')\n" "class_labels .*range.csv row 6: label 2 of subject 's1_01' is outside 0..1"
    bad noint "subject,label\n$(rows | sed 's/^s0_03,0/s0_03,zero/')\n" "class_labels .*noint.csv row 5: label 'zero' of subject 's0_03' is not an integer"
    # A segmentation head on a classification corpus is refused before training.
    def "$WORK/data/labels.csv" > skull.ini
    timeout 120 $MPIEXEC -n 2 "$MEDNET" prep skull.ini --force > prep.log 2>&1 || { cat prep.log; fail "prep"; }
    cfg runseg seg > seg.ini
    timeout 60 $MPIEXEC -n 2 "$MEDNET" finetune seg.ini > seg.log 2>&1 && fail "seg head on a classification corpus ran"
    grep -q "dataset 'skull' of .* is a classification dataset, but model.head = seg" seg.log || { cat seg.log; fail "no head/task message"; }
    echo "ok: head/task mismatch refused"
    ;;
*) fail "unknown case $CASE" ;;
esac
echo "PASS $CASE"

#!/usr/bin/env bash
# test_synth_cli.sh MEDNET CORPUS_INI PRETRAIN_INI WORKDIR MPIEXEC...: `mednet synth` end to end, run by ctest
# (tests/cmake/synth.cmake).  Checks: the same seed gives the same bytes (every file and synth.ini), another seed
# other images; 1 and 2 ranks write identical files; bad options and inputs end with a non-zero status and one
# message naming the cause (also on 2 ranks, status 1, no MPI_Abort); an existing synth.ini needs --force; the
# generated definition goes through `mednet prep` and the corpus pre-trains for a few steps.
set -uo pipefail
mednet=$1 corpus_ini=$2 pretrain_ini=$3 work=$4
shift 4
mpiexec=("$@")
fail() { echo "FAIL (synth): $*" >&2; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/../lib/workdir.sh"
mn_workdir "$work" || fail "cannot use $work"
gen=(--subjects 2 --spacing 4 --progress 5)

# Determinism: the same seed twice (the second with --force over the first), 2 ranks, and another seed.
timeout 300 "$mednet" synth "$corpus_ini" --out a "${gen[@]}" --seed 5 > a.log 2>&1 || { cat a.log; fail "synth a"; }
timeout 300 "$mednet" synth "$corpus_ini" --out b "${gen[@]}" --seed 5 > b.log 2>&1 || { cat b.log; fail "synth b"; }
timeout 300 "${mpiexec[@]}" -n 2 "$mednet" synth "$corpus_ini" --out c "${gen[@]}" --seed 5 > c.log 2>&1 ||
  { cat c.log; fail "synth c (2 ranks)"; }
timeout 300 "$mednet" synth "$corpus_ini" --out d "${gen[@]}" --seed 6 > d.log 2>&1 || { cat d.log; fail "synth d"; }
n=$(cd a && find . -name '*.nii.gz' | wc -l)
[ "$n" -eq 20 ] || fail "expected 20 files (5 datasets x 2 subjects x image + label), found $n"
for f in $(cd a && find . -name '*.nii.gz' | sort); do
  cmp -s "a/$f" "b/$f" || fail "same seed, different bytes: $f"
  cmp -s "a/$f" "c/$f" || fail "1 and 2 ranks differ: $f"
done
sed 's#/b\b#/a#g; s#/b/#/a/#g' b/synth.ini | cmp -s - a/synth.ini || fail "synth.ini differs between two runs"
echo "same seed: $n files bitwise identical across two runs and across 1 and 2 ranks"
ndiff=0
for f in $(cd a && find . -name '*_image.nii.gz'); do cmp -s "a/$f" "d/$f" || ndiff=$((ndiff + 1)); done
[ "$ndiff" -eq 10 ] || fail "another seed changed only $ndiff of 10 images"
echo "another seed: all 10 images differ"

# A rerun into the same folder without --force is refused, and leaves the files alone.
before=$(md5sum a/synth.ini)
"$mednet" synth "$corpus_ini" --out a "${gen[@]}" --seed 5 > again.log 2>&1 && fail "rerun without --force accepted"
grep -q "synth.ini' exists" again.log || { cat again.log; fail "rerun: no message naming synth.ini"; }
[ "$(md5sum a/synth.ini)" = "$before" ] || fail "refused rerun changed synth.ini"

# Bad options and inputs: status 1 (agreed: no MPI_Abort) and one message naming the cause.
bad_np="1 2" # the first case on 1 and 2 ranks, the others on 2 (the agreement path; CI time)
bad() { # bad PATTERN ARGS...
  local pat=$1
  shift
  for np in $bad_np; do
    timeout 120 "${mpiexec[@]}" -n $np "$mednet" synth "$@" > bad.log 2>&1
    st=$?
    [ $st -eq 1 ] || { cat bad.log; fail "'$*' on $np rank(s): status $st, expected 1"; }
    ! grep -q MPI_ABORT bad.log || { cat bad.log; fail "'$*': MPI_Abort"; }
    grep -Eq -- "$pat" bad.log || { cat bad.log; fail "'$*': no message matching '$pat'"; }
  done
  echo "  refused: $* -> $(grep -E -m1 -- "$pat" bad.log | cut -c1-110)"
}
bad "missing --out" "$corpus_ini"
bad_np=2
bad "--subjects needs a number" "$corpus_ini" --out e --subjects 0
bad "--seed needs a whole number" "$corpus_ini" --out e --seed -3
bad "--scale needs a number" "$corpus_ini" --out e --scale 1.5
bad "unknown option '--bogus'" "$corpus_ini" --out e --bogus
bad "nope.ini" nope.ini --out e
printf '[corpus]\nname = x\n[ds]\nimage = missing_*.nii.gz\nlabel = missing_*.nii.gz\nclasses = bg, fg\n' > nofiles.ini
bad "missing_" nofiles.ini --out e
printf 'not a nifti file' > broken.nii
printf '[corpus]\nname = x\nroot = %s\n[ds]\nimage = broken.nii\nlabel = broken.nii\nclasses = bg, fg\n' "$PWD" > broken.ini
bad "broken.nii" broken.ini --out e
[ ! -e e/synth.ini ] || fail "a failed run left e/synth.ini"

# The generated definition through prep, then a few pre-training steps on the synthetic corpus.
timeout 300 "${mpiexec[@]}" -n 2 "$mednet" prep a/synth.ini --output synth.h5 > prep.log 2>&1 || { cat prep.log; fail "prep"; }
grep -Eq 'colin_aal +pretrain MR +2 ' prep.log || { cat prep.log; fail "prep: colin_aal does not hold 2 volumes"; }
timeout 300 "${mpiexec[@]}" -n 2 "$mednet" pretrain "$pretrain_ini" corpus.path=synth.h5 train.out_dir=pt \
  train.steps=3 train.batch=1 sampler.crop=16 train.eval_batches=0 train.log_every=1 train.checkpoint_every=0 \
  train.threads=1 > pt.log 2>&1 || { cat pt.log; fail "pretrain on the synthetic corpus"; }
steps=$(grep -c '"loss"' pt/metrics.jsonl)
[ "$steps" -ge 3 ] || { cat pt.log; fail "pretrain logged $steps steps, expected 3"; }
grep -q '"loss": [0-9]' pt/metrics.jsonl || fail "no finite loss in metrics.jsonl"
echo "prep (10 volumes) + 3 pre-training steps on the synthetic corpus: losses $(grep -o '"loss": [0-9.e+-]*' pt/metrics.jsonl | cut -d' ' -f2 | tr '\n' ' ')"
echo "test_synth_cli: all checks passed"

#!/bin/sh
# test_corpus_cli.sh MEDNET MPIEXEC...: `mednet prep` on bad input, run in the corpus test directory (the synthetic
# inputs of test_corpus_inputs under bad/, the corrupt corpora of test_corpus_np1, mricron_np1.h5).
# For every bad input: exit status 1 (an agreed error: every rank stops cleanly; MPI_Abort would give 10 + code and
# an "MPI_ABORT" banner), the cause named on stderr, no output and no temporary file written, and an existing
# corpus never modified (without --force it is refused; with --force and a bad input it stays).
set -u
MEDNET=$1
shift
MPIEXEC="$*"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect_fail NAME PATTERN CMD...: CMD must exit with status 1, print PATTERN on stderr and not abort.
expect_fail() {
    what=$1 pattern=$2
    shift 2
    "$@" > cli.out 2> cli.err
    status=$?
    [ "$status" -eq 1 ] || fail "$what: exit status $status, expected 1 (an agreed error)"
    grep -q "MPI_ABORT" cli.out cli.err && fail "$what: the job ended in MPI_Abort"
    grep -q -- "$pattern" cli.err || { fail "$what: stderr does not name '$pattern':"; cat cli.err; }
    echo "ok   $what: $(grep -m1 -- "$pattern" cli.err | cut -c1-160)"
}

bad_ini() { # bad_ini IMAGE LABEL [EXTRA]
    printf '[corpus]\nroot = bad\n[d]\nimage = %s\nlabel = %s\nclasses = background, core, shell\n%s\n' "$1" "$2" "${3:-}" > bad_cli.ini
}

cp mricron_np1.h5 existing.h5 && cp existing.h5 existing.ref || exit 1
for case in "missing|no_such.nii.gz|good_seg.nii.gz|no_such.nii.gz" \
            "wrong magic|magic.nii|good_seg.nii.gz|wrong NIfTI-1 magic" \
            "truncated .nii.gz|trunc.nii.gz|good_seg.nii.gz|trunc.nii.gz" \
            "4-D volume|four_d.nii.gz|good_seg.nii.gz|4D image" \
            "label grid|good.nii.gz|mismatch_seg.nii.gz|does not match image" \
            "empty label|good.nii.gz|empty_seg.nii.gz|is empty" \
            "NaN voxels|nan.nii.gz|good_seg.nii.gz|NaN/Inf" \
            "code outside map|good.nii.gz|code7_seg.nii.gz|label value 7"; do
    name=${case%%|*} rest=${case#*|}
    img=${rest%%|*} rest=${rest#*|}
    lab=${rest%%|*} pattern=${rest#*|}
    bad_ini "$img" "$lab"
    rm -f fresh.h5 fresh.h5.tmp
    expect_fail "$name (1 rank)" "$pattern" "$MEDNET" prep bad_cli.ini --output fresh.h5
    expect_fail "$name (2 ranks)" "$pattern" $MPIEXEC 2 "$MEDNET" prep bad_cli.ini --output fresh.h5
    [ -e fresh.h5 ] && fail "$name: output written"
    [ -e fresh.h5.tmp ] && fail "$name: temporary file left"
    expect_fail "$name (--force over an existing corpus)" "$pattern" "$MEDNET" prep bad_cli.ini --output existing.h5 --force
    cmp -s existing.h5 existing.ref || fail "$name: the existing corpus was modified"
    [ -e existing.h5.tmp ] && fail "$name: temporary file left"
done

expect_fail "existing output without --force" "exists; refusing to overwrite" \
    "$MEDNET" prep bad_cli.ini --output existing.h5
cmp -s existing.h5 existing.ref || fail "no --force: the existing corpus was modified"

expect_fail "output directory missing" "directory does not exist" \
    $MPIEXEC 2 "$MEDNET" prep bad_cli.ini --output no_such_dir/out.h5

# Corrupt corpus files (made by test_corpus_np1): reading them fails with a message naming the problem.
expect_fail "truncated corpus" "truncated, corrupt or not an HDF5 file" "$MEDNET" prep --info np1_trunc.h5
expect_fail "dataset removed" "dataset 'ct_b' is listed" "$MEDNET" prep --info np1_nods.h5
expect_fail "volume removed" "vol_0001' is missing" $MPIEXEC 2 "$MEDNET" prep --info np1_novol.h5
expect_fail "missing corpus" "does not exist" "$MEDNET" prep --info no_such_corpus.h5
expect_fail "truncated corpus (2 ranks)" "truncated, corrupt or not an HDF5 file" $MPIEXEC 2 "$MEDNET" prep --info np1_trunc.h5
expect_fail "missing corpus (2 ranks)" "does not exist" $MPIEXEC 2 "$MEDNET" prep --info no_such_corpus.h5
expect_fail "not an HDF5 file (2 ranks)" "is not an HDF5 file" $MPIEXEC 2 "$MEDNET" prep --info bad_cli.ini
expect_fail "unknown option (2 ranks)" "unknown option '--frobnicate'" $MPIEXEC 2 "$MEDNET" prep --frobnicate bad_cli.ini
[ "$(grep -c "unknown option" cli.err)" -eq 1 ] || fail "unknown option: reported $(grep -c "unknown option" cli.err) times, expected once"

if [ "$fails" -ne 0 ]; then echo "test_corpus_cli: $fails check(s) FAILED"; exit 1; fi
echo "test_corpus_cli: all checks passed"

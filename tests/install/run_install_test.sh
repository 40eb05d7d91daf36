#!/usr/bin/env bash
# run_install_test.sh BUILD_DIR MPIEXEC...: install the build tree into a fresh temporary prefix and run mednet
# from there only (ctest label "install", tests/cmake/install.cmake).
#
#   1. cmake --install BUILD_DIR --prefix <tmp>: the binary, the library, headers, jobs, configs, the converter;
#   2. <prefix>/bin/mednet info: runs from the prefix, every shared library resolves, one MPI library only;
#   3. mednet prep of <prefix>/share/mednet/configs/corpus_mricron.ini on 2 ranks (needs mricron-data);
#   4. a 3-step mednet pretrain on 2 ranks with <prefix>/share/mednet/configs/pretrain_mricron.ini.
# Each step checks the exit status and the expected lines, prints what it checked, and exits non-zero on failure.
set -uo pipefail
build=$1
shift
mpiexec=("$@")
fail() { echo "FAIL (install): $*" >&2; exit 1; }
cmake=${CMAKE_COMMAND:-cmake}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mednet-install.XXXXXX") || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
# expect LOG WHAT PATTERN...: every PATTERN (grep -E) occurs in LOG.
expect() {
  local log=$1 what=$2
  shift 2
  for pat in "$@"; do
    grep -Eq -- "$pat" "$log" || { cat "$log"; fail "$what: no line matching '$pat'"; }
  done
}

# 1. install
"$cmake" --install "$build" --prefix "$prefix" > "$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "cmake --install"; }
for f in bin/mednet bin/mednet-convert-medicalnet include/mednet/model.h share/mednet/configs/corpus_mricron.ini \
         share/mednet/configs/pretrain_mricron.ini share/mednet/jobs/pretrain.sbatch \
         share/mednet/tools/convert_medicalnet.py share/mednet/tools/model_ref.py; do
  [ -e "$prefix/$f" ] || fail "$f is not installed"
done
ls "$prefix"/lib*/libmednet.* > /dev/null 2>&1 || fail "libmednet is not installed"
[ -x "$prefix/share/mednet/jobs/pretrain.sbatch" ] || fail "jobs are installed without their execute bit"
echo "  installed into $prefix: $(find "$prefix" -type f | wc -l) files"

# 2. mednet info, from the prefix, with the build tree out of sight
mednet=$prefix/bin/mednet
ldd "$mednet" > "$tmp/ldd.log" 2>&1 || fail "ldd $mednet"
! grep -q "not found" "$tmp/ldd.log" || { cat "$tmp/ldd.log"; fail "unresolved shared libraries"; }
nmpi=$(grep -Ec '^\s*lib(mpi|mpich)(_[A-Za-z0-9]+)?\.so' "$tmp/ldd.log")
[ "$nmpi" -eq 1 ] || { cat "$tmp/ldd.log"; fail "$nmpi MPI libraries loaded (two MPIs mixed?)"; }
! grep -q "$build" "$tmp/ldd.log" || fail "the installed binary loads libraries from the build tree"
(cd "$tmp" && "$mednet" info) > "$tmp/info.log" 2>&1 || { cat "$tmp/info.log"; fail "mednet info exited with $?"; }
expect "$tmp/info.log" "mednet info" '^mednet [0-9]+\.[0-9]+' '^MPI ranks: 1' '^BLIS kernels: '
mpilib=$(grep -E '^\s*lib(mpi|mpich)' "$tmp/ldd.log" | awk '{print $1}')
echo "  mednet info: $(head -1 "$tmp/info.log"); $(grep '^BLIS kernels' "$tmp/info.log" | cut -c1-40); MPI $mpilib"

# 3. the default corpus from the installed config, on 2 ranks
cd "$tmp" || fail "cd $tmp"
configs=$prefix/share/mednet/configs
timeout 300 "${mpiexec[@]}" -n 2 "$mednet" prep "$configs/corpus_mricron.ini" --output "$tmp/corpus.h5" \
  > prep.log 2>&1
status=$?
[ $status -eq 0 ] || { cat prep.log; fail "mednet prep exited with $status"; }
[ -s corpus.h5 ] || { cat prep.log; fail "no corpus file"; }
expect prep.log "mednet prep" 'colin_aal'
echo "  mednet prep (2 ranks): exit 0, corpus $(stat -c %s corpus.h5) bytes"

# 4. a short pre-training run, on 2 ranks
timeout 300 "${mpiexec[@]}" -n 2 "$mednet" pretrain "$configs/pretrain_mricron.ini" corpus.path="$tmp/corpus.h5" \
  train.out_dir="$tmp/pt" train.steps=3 train.eval_batches=0 train.log_every=1 > pretrain.log 2>&1
status=$?
[ $status -eq 0 ] || { cat pretrain.log; fail "mednet pretrain exited with $status"; }
expect pretrain.log "mednet pretrain" 'step 3/3 +loss [0-9.]+'
[ -f pt/latest ] || { cat pretrain.log; fail "no checkpoint (pt/latest) after the run"; }
echo "  mednet pretrain (2 ranks, 3 steps): exit 0, $(cat pt/latest)"
echo "install test passed"

#!/usr/bin/env bash
# run_mutations.sh [-l LIST] [-k] [NAME...]: does the test suite catch planted bugs?
#
# For every entry of LIST (default tests/mutation/mutations.txt: name | file | sed -E expression | ctest -R regex),
# or only the NAMEs given: apply the sed expression to the file in a SCRATCH COPY of the tree (never this tree),
# rebuild, run the named test(s), and report "caught" (the test failed) or "MISSED" (it passed).  Before its first
# mutant each named test runs once on the unmodified copy and must pass, or a "caught" would mean nothing; an
# expression that does not change its file, or a mutant that does not compile, is reported as an error.
#
# The copy is the working tree as it is (tracked and untracked files, not ignored ones, so uncommitted edits are
# included), made under ${TMPDIR:-/tmp}; it is removed at the end unless -k.  One build of the copy (cmake,
# Release, -j${MN_MUT_JOBS:-2}; only the targets in MN_MUT_TARGETS if set, e.g. "mednet test_layers"), then one
# incremental rebuild per mutant.  Exit status: 0 when every mutant is
# caught, 1 otherwise.  Slow (a full build, then a rebuild and a test run per entry: about 20-40 minutes on 2
# cores), so it is not part of ctest: run it by hand after changing a test or a kernel.
#
#   bash tests/mutation/run_mutations.sh                       # every entry
#   bash tests/mutation/run_mutations.sh relu_passes_negative  # one entry
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
list=$here/mutations.txt
keep=0
while getopts "l:k" opt; do
  case $opt in
  l) list=$(cd "$(dirname "$OPTARG")" && pwd)/$(basename "$OPTARG") ;;
  k) keep=1 ;;
  *) echo "usage: $0 [-l LIST] [-k] [NAME...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
jobs=${MN_MUT_JOBS:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

# The entries: name, file, expression, test regex (fields split at " | ", spaces around them trimmed).
names=() files=() exprs=() tests=()
while IFS= read -r line; do
  [[ -z "${line// /}" || "$line" == \#* ]] && continue
  n=$(awk -F' [|] ' '{print NF}' <<<"$line")
  [ "$n" -eq 4 ] || { echo "bad entry in $list (want 4 fields separated by ' | '): $line" >&2; exit 2; }
  IFS=$'\t' read -r nm f ex t < <(awk -F' [|] ' '{for (i = 1; i <= 4; i++) { gsub(/^ +| +$/, "", $i) }
                                                    printf "%s\t%s\t%s\t%s\n", $1, $2, $3, $4}' <<<"$line")
  if [ $# -gt 0 ]; then
    want=0
    for a in "$@"; do [ "$a" = "$nm" ] && want=1; done
    [ $want -eq 1 ] || continue
  fi
  names+=("$nm") files+=("$f") exprs+=("$ex") tests+=("$t")
done < "$list"
[ ${#names[@]} -gt 0 ] || { echo "no entries selected from $list" >&2; exit 2; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/mn_mutation.XXXXXX")
cleanup() { if [ $keep -eq 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT
src=$scratch/src build=$scratch/build
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - --) | tar -xf - -C "$src" ||
  { echo "could not copy the tree" >&2; exit 2; }
echo "scratch copy: $src ($(git -C "$repo" rev-parse --short HEAD) plus uncommitted changes)"
t0=$SECONDS
targets=()
for tg in ${MN_MUT_TARGETS:-}; do targets+=(--target "$tg"); done
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=/usr/bin/python3 > "$scratch/cmake.log" 2>&1 &&
  cmake --build "$build" -j"$jobs" "${targets[@]}" > "$scratch/build.log" 2>&1 ||
  { tail -20 "$scratch/build.log" "$scratch/cmake.log" >&2; echo "the unmodified copy does not build" >&2; exit 2; }
echo "built the unmodified copy in $((SECONDS - t0)) s"
# Test time limits in the scratch build are multiplied by MN_MUT_TIMEOUT_SCALE (default 3): on a loaded machine a
# slow test must not count as "caught".  Only the generated CTestTestfile.cmake files of the copy are edited.
scale=${MN_MUT_TIMEOUT_SCALE:-3}
find "$build" -name CTestTestfile.cmake -exec perl -pi -e 's/TIMEOUT "(\d+)"/"TIMEOUT \"" . ($1 * '"$scale"') . "\""/ge' {} +

# Baseline: a named test must pass on the unmodified copy before its first mutant (run lazily, so that the fast
# layer tests report first); a test that fails unmodified turns its entries into errors.
declare -A baseline
baseline_ok() {
  local t=$1
  if [ -z "${baseline[$t]:-}" ]; then
    # rebuild first: the previous mutant's file is restored, but its objects are still in the build
    if cmake --build "$build" -j"$jobs" "${targets[@]}" > "$scratch/baseline_build.log" 2>&1 &&
       (cd "$build" && ctest -R "$t" --output-on-failure > "$scratch/baseline.log" 2>&1) &&
       grep -q "100% tests passed" "$scratch/baseline.log"; then
      baseline[$t]=pass
    else
      baseline[$t]=fail
      tail -30 "$scratch/baseline.log" >&2
    fi
  fi
  [ "${baseline[$t]}" = pass ]
}

# One mutant at a time.
printf '%-30s %-26s %-8s %6s  %s\n' mutation test result secs "first failure line"
caught=0 total=0 bad=0
for i in "${!names[@]}"; do
  nm=${names[$i]} f=${files[$i]} ex=${exprs[$i]} t=${tests[$i]}
  total=$((total + 1))
  cp "$src/$f" "$scratch/orig"
  t0=$SECONDS
  result="" why=""
  if ! baseline_ok "$t"; then
    result=ERROR why="'$t' fails (or is not found) on the unmodified tree"
  elif ! sed -E -i "$ex" "$src/$f" 2> "$scratch/sed.log"; then
    result=ERROR why="sed: $(head -1 "$scratch/sed.log")"
  elif cmp -s "$src/$f" "$scratch/orig"; then
    result=ERROR why="the expression does not change $f"
  elif ! cmake --build "$build" -j"$jobs" "${targets[@]}" > "$scratch/mut_build.log" 2>&1; then
    result=ERROR why="mutant does not compile: $(grep -m1 'error' "$scratch/mut_build.log")"
  elif (cd "$build" && ctest -R "$t" --output-on-failure > "$scratch/$nm.log" 2>&1); then
    result=MISSED
  elif ! grep -q "tests failed out of\|tests passed, [0-9]* tests failed" "$scratch/$nm.log" ||
       grep -q "No tests were found" "$scratch/$nm.log"; then
    result=ERROR why="ctest found no test '$t'"
  else
    result=caught
    why=$(grep -m1 -E "^FAIL|FAIL |FAILED|Error|error" "$scratch/$nm.log" | cut -c1-110)
  fi
  cp "$scratch/orig" "$src/$f"
  touch "$src/$f"
  case $result in caught) caught=$((caught + 1)) ;; ERROR) bad=$((bad + 1)) ;; esac
  printf '%-30s %-26s %-8s %6d  %s\n' "$nm" "$t" "$result" $((SECONDS - t0)) "$why"
done
echo "caught $caught of $total planted bugs ($bad error(s))"
[ "$caught" -eq "$total" ]

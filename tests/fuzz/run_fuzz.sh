#!/usr/bin/env bash
# run_fuzz.sh BUILD_DIR SECONDS [HARNESS...]: run each libFuzzer harness of a MN_FUZZ build for SECONDS seconds
# (default: all five: nifti config safetensors corpus ckpt) and print one line per harness: executions, coverage
# (libFuzzer's `cov:`, edges of the instrumented code reached), corpus size, findings.
#
#   CC=clang-14 cmake -S . -B build-fuzz -DMN_FUZZ=ON -DMN_BUILD_TESTS=OFF && cmake --build build-fuzz -j2
#   bash tests/fuzz/run_fuzz.sh build-fuzz 60          # the bounded run: 60 s per harness
#   bash tests/fuzz/run_fuzz.sh build-fuzz 15          # what CI runs
#
# Each harness starts from its committed seeds (tests/fuzz/seeds/<h>) plus the inputs earlier runs in this build
# directory found interesting (BUILD_DIR/fuzz-corpus/<h>).  A crash, sanitizer report, leak, timeout (10 s per input)
# or out-of-memory (4 GiB) stops the harness, leaves the input in BUILD_DIR/fuzz-artifacts/<h>/ and makes the
# script exit 1.  Fix the cause, then commit the input as tests/fuzz/regress/<h>/<name>: ctest replays it in every
# build (test_fuzz_replay_<h>).  Sanitizer settings: tests/sanitizer/ (Open MPI's own leaks at exit are suppressed).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:?usage: run_fuzz.sh BUILD_DIR SECONDS [HARNESS...]}"
secs="${2:?usage: run_fuzz.sh BUILD_DIR SECONDS [HARNESS...]}"
shift 2
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(nifti config safetensors corpus ckpt)
build="$(cd "$build" && pwd)"
# intercept_tls_get_addr=0: see tests/CMakeLists.txt (LeakSanitizer's dynamic-TLS scan crashed on this glibc).
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:check_initialization_order=1:intercept_tls_get_addr=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$here/../sanitizer/lsan.supp:print_suppressions=0"
export OMPI_MCA_mca_base_component_disable_dlclose=1
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TMPDIR="$(mktemp -d /tmp/mn_fuzz_XXXXXX)"
status=0
printf '%-12s %10s %8s %8s %8s  %s\n' harness execs exec/s cov corpus findings
for h in "${harnesses[@]}"; do
  exe="$build/tests/fuzz/fuzz_$h"
  if [ ! -x "$exe" ]; then
    echo "run_fuzz.sh: $exe not found (configure with CC=clang-14 -DMN_FUZZ=ON)" >&2
    exit 2
  fi
  corpus="$build/fuzz-corpus/$h" artifacts="$build/fuzz-artifacts/$h"
  mkdir -p "$corpus" "$artifacts"
  log="$build/fuzz-$h.log"
  # The corpus harness runs MPI: LeakSanitizer's per-input and exit checks (they stop every thread of the process)
  # crash in LSan's own tracer on Open MPI's threads, so leak checking is off for this harness alone; its
  # leaks are checked at exit by the ctest replay (test_fuzz_replay_corpus), with tests/sanitizer/lsan.supp.
  extra=() asan="$ASAN_OPTIONS"
  [ "$h" = corpus ] && extra=(-detect_leaks=0) asan="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}"
  # -close_fd_mask=2: the library's error messages for rejected inputs go to stderr thousands of times a second;
  # libFuzzer keeps its own output and the sanitizers' reports on a duplicate of stderr.
  ASAN_OPTIONS="$asan" "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=8192 -print_final_stats=1 \
         -close_fd_mask=2 "${extra[@]}" -artifact_prefix="$artifacts/" "$corpus" "$here/seeds/$h" > "$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ncorp=$(find "$corpus" -type f | wc -l)
  found="none"
  if [ $rc -ne 0 ]; then
    found="FAILED (exit $rc): $(ls -t "$artifacts" | head -1 | sed "s|^|$artifacts/|") - see $log"
    status=1
  fi
  printf '%-12s %10s %8s %8s %8s  %s\n' "$h" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$ncorp" "$found"
done
rm -rf "$TMPDIR"
exit $status

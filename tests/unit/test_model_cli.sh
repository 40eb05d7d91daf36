#!/usr/bin/env bash
# test_model_cli.sh CASE MEDNET PYTHON WORKDIR: the `mednet model` command, run by ctest (tests/cmake/model.cmake).
# Every case checks the exit status of each command (0 where it must succeed), then what it printed, then values.
#   table          the parameter table of the seven depths: exit 0 and the counts of PyTorch's MedicalNet models;
#                  the convolution plan for --threads 1 and 2 (resnet18 at 1x112^3: with AVX2+FMA or AVX-512 the
#                  direct kernels on layers 1-4 and the head, the strided conv's backward-data on the GEMM path;
#                  without, layer1's backward passes on the GEMM path from 2 threads, layer3 on Winograd and layer4
#                  on the tap path), and --threads 0 is refused
#   export_import  export (resnet18, two conv_seg heads) -> every float value replaced by seeded random ones (an
#                  import that loaded nothing would otherwise pass) -> import --strict -> export -> bitwise compare;
#                  a file missing one tensor -> import --strict exits 1 naming it
#   convert        a fake MedicalNet resnet_10.pth (random tensors, 'module.' prefix) -> convert_medicalnet.py ->
#                  import --strict -> export -> every value compared bitwise with the .pth
set -uo pipefail
case_name=$1 mednet=$2 py=$3 work=$4
ref=$(cd "$(dirname "$0")/../ref" && pwd)
fail() { echo "FAIL ($case_name): $*" >&2; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/../lib/workdir.sh"
mn_workdir "$work" || fail "cannot use $work"
# must LOG CMD...: run CMD with its output in LOG (and printed); exit status 0 required.
must() {
  local log=$1 st
  shift
  "$@" > "$log" 2>&1
  st=$?
  cat "$log"
  [ "$st" -eq 0 ] || fail "exit status $st from: $*"
}
case "$case_name" in
table)
  must table.log "$mednet" model
  tr '\n' ' ' < table.log | grep -Eq 'resnet10 .*14355520.*resnet18 .*32986176.*resnet34 .*63295808.*resnet50 .*46155072.*resnet101 .*85201216.*resnet152 .*117359936.*resnet200 .*126559552' ||
    fail "parameter counts differ from MedicalNet's"
  # The plan, on any thread count: Winograd F(4,3) takes every pass of layers 1-3's stride-1 3x3x3 convolutions at
  # 112^3 input (64 tiles or more, dilation at most 2); with AVX2+FMA or AVX-512 the direct kernels take the
  # dilation-4 layer4 and the head (and the strided layer2.0.conv1 but its backward-data); without them layer4 runs
  # on the tap path.
  simd=0
  grep -qw avx512f /proc/cpuinfo || { grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; } && simd=1
  for t in 1 2; do
    must plan$t.log "$mednet" model --depth 18 --input 1x112x112x112 --threads $t
    grep -q "MEDNET_CONV_ALGO=rule, the default, $t thread(s)" plan$t.log || fail "--threads $t: plan header"
    for l in 'layer1.0.conv1 +3 like it: 64->64 k3 s1 d1 @1x28^3' \
             'layer2.0.conv2 +2 like it: 128->128 k3 s1 d1 @1x14^3' \
             'layer3.0.conv2 +2 like it: 256->256 k3 s1 d2 @1x14^3'; do
      grep -qF "$l: winograd4/winograd4/winograd4" plan$t.log || fail "--threads $t: $l not on Winograd F(4,3)"
    done
    if [ $simd = 1 ]; then
      for l in 'layer4.0.conv2 +2 like it: 512->512 k3 s1 d4 @1x14^3' 'conv_seg.3: 32->32 k3 s1 d1 @1x28^3'; do
        grep -qF "$l: direct/direct/direct" plan$t.log || fail "--threads $t: $l not on the direct kernels"
      done
      grep -qF 'layer2.0.conv1: 64->128 k3 s2 d1 @1x28^3: direct/dense/direct' plan$t.log ||
        fail "--threads $t: the strided layer2.0.conv1 not on the direct kernels (backward-data on the GEMM path)"
    else
      grep -q 'layer4.0.conv2 +2 like it: 512->512 k3 s1 d4 @1x14^3: taps/taps/taps' plan$t.log ||
        fail "--threads $t: layer4 not on the tap path"
    fi
  done
  "$mednet" model --depth 18 --threads 0 > t0.log 2>&1
  st=$?
  cat t0.log
  [ "$st" -eq 1 ] || fail "--threads 0: exit status $st, expected 1"
  grep -q "threads must be a whole number from 1 to 4096, got '0'" t0.log || fail "--threads 0: no message naming it"
  ;;
export_import)
  m=(model --depth 18 --heads 2:4,7:3)
  must a.log "$mednet" "${m[@]}" --input 1x24x24x24 --export a.safetensors
  grep -q 'memory plan for input 1x1x24x24x24' a.log || fail "no memory plan for the input"
  # A five-number input (N x C x D x H x W written by habit) is refused, not read as its first four numbers.
  "$mednet" "${m[@]}" --input 1x1x24x24x24 > i5.log 2>&1
  st=$?
  cat i5.log
  [ "$st" -eq 1 ] || fail "--input 1x1x24x24x24: exit status $st, expected 1"
  grep -q "input must be NxDxHxW.*got '1x1x24x24x24'" i5.log || fail "--input 1x1x24x24x24: no message naming it"
  must p.log "$py" "$ref/st_roundtrip.py" perturb a.safetensors b.safetensors 7
  must b.log "$mednet" "${m[@]}" --import b.safetensors --strict --export c.safetensors
  grep -Eq 'imported .*loaded, 0 missing, 0 unexpected, 0 mis-shaped' b.log || fail "import report"
  must c.log "$py" "$ref/st_roundtrip.py" compare b.safetensors c.safetensors
  # A file missing one tensor is refused under --strict: a non-zero status (1, an agreed error), naming the tensor.
  must d.log "$py" "$ref/st_roundtrip.py" drop b.safetensors d.safetensors layer3.0.bn2.running_var
  "$mednet" "${m[@]}" --import d.safetensors --strict > e.log 2>&1
  st=$?
  cat e.log
  [ "$st" -eq 1 ] || fail "import of a file missing a tensor: expected exit status 1, got $st"
  grep -q 'layer3.0.bn2.running_var' e.log || fail "the message does not name the missing tensor"
  ;;
convert)
  must cvt.log "$py" "$ref/convert_medicalnet.py" --selftest .
  must imp.log "$mednet" model --depth 10 --classes 2 --import resnet_10.safetensors --strict --export back.safetensors
  grep -q '72 tensors loaded, 0 missing, 0 unexpected, 0 mis-shaped' imp.log || fail "import report"
  must cmp.log "$py" "$ref/st_roundtrip.py" compare-pth resnet_10.pth back.safetensors
  ;;
*) fail "unknown case" ;;
esac
echo "$case_name: passed"

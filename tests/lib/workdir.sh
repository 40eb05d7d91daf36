# Sourced by the test scripts that write large outputs (checkpoints of 100+ MiB each, corpora, sweeps).
#   mn_workdir DIR      empty DIR, create it and cd into it; DIR is removed when the script exits with status 0,
#                       so that a whole ctest run needs little disk (a passed test leaves nothing to read), and is
#                       kept when the test fails, for its logs.  MN_KEEP_TEST_OUTPUT=1 keeps every folder.
#   mn_at_exit CMD      run CMD (a string, eval'd) when the script exits, before the removal (e.g. unmount a
#                       file system mounted inside DIR).  One EXIT trap serves both: do not set another.
_mn_exit_cmds=()
_mn_workdir=
mn_at_exit() { _mn_exit_cmds+=("$1"); }
_mn_on_exit() {
  local status=$? c
  for c in "${_mn_exit_cmds[@]}"; do eval "$c"; done
  if [ "$status" -eq 0 ] && [ -n "$_mn_workdir" ] && [ -z "${MN_KEEP_TEST_OUTPUT:-}" ]; then
    cd / && rm -rf -- "$_mn_workdir"
  elif [ -n "$_mn_workdir" ] && [ -d "$_mn_workdir" ]; then
    echo "test output kept in $_mn_workdir" >&2
  fi
  exit "$status"
}
trap _mn_on_exit EXIT
mn_workdir() {
  rm -rf -- "$1" && mkdir -p -- "$1" && cd -- "$1" || return 1
  _mn_workdir=$(pwd)
}

#!/bin/bash
# signal_lead.sh METRICS.jsonl...: the pre-timeout signal lead (seconds) a pre-training job needs, from the metrics of
# an earlier run with the same model, heads, batch and rank count (mednet writes t_step per logged step and t_ckpt
# per checkpoint into <out_dir>/metrics.jsonl):
#
#     lead = 60 + 1.5 x (longest step + longest checkpoint write), rounded up to 10 s
#
# 60 s for Slurm's lateness in delivering --signal, then the step running when the signal arrives, then the
# checkpoint; 1.5 for the variation between runs.  Prints the lead on stdout and how it was formed on stderr:
#     sbatch --signal=B:USR1@$(jobs/signal_lead.sh run1/metrics.jsonl) ... jobs/pretrain.sbatch ...
#     jobs/scaling_sweep.sh -L "$(jobs/signal_lead.sh run1/metrics.jsonl)" ...
# Exit status 1 with a message naming the file when a file is unreadable or holds no step or no checkpoint.
set -u
[ $# -ge 1 ] || { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
step=0 ckpt=0
for f in "$@"; do
    [ -r "$f" ] || { echo "signal_lead.sh: cannot read $f" >&2; exit 1; }
    s=$(sed -n 's/.*"t_step": \([0-9.e+-]*\).*/\1/p' "$f" | sort -g | tail -n 1)
    c=$(sed -n 's/.*"t_ckpt": \([0-9.e+-]*\).*/\1/p' "$f" | sort -g | tail -n 1)
    [ -n "$s" ] || { echo "signal_lead.sh: $f has no logged step (t_step): not a mednet metrics file?" >&2; exit 1; }
    [ -n "$c" ] || { echo "signal_lead.sh: $f has no checkpoint write (t_ckpt): run until one is written" >&2; exit 1; }
    step=$(awk -v a="$step" -v b="$s" 'BEGIN { print (b > a) ? b : a }')
    ckpt=$(awk -v a="$ckpt" -v b="$c" 'BEGIN { print (b > a) ? b : a }')
done
lead=$(awk -v s="$step" -v c="$ckpt" 'BEGIN { x = 60 + 1.5 * (s + c); printf "%d", 10 * int((x + 9.999) / 10) }')
echo "signal_lead.sh: longest step ${step} s, longest checkpoint write ${ckpt} s: lead 60 + 1.5 x (step + checkpoint)" \
    "= ${lead} s" >&2
echo "$lead"

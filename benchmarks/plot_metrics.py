#!/usr/bin/env python3
"""plot_metrics.py METRICS.jsonl [METRICS.jsonl ...] --out DIR: loss and Dice curves of mednet runs as PNGs.

Reads the metrics log that `mednet pretrain` / `mednet finetune` write (DESIGN.md, "What a run records"): step lines
{"step", "loss", "lr", ..., "head_loss": {dataset: loss}} and evaluation lines {"step", "eval", "dice": {dataset:
Dice}, "mean_dice"} (step 0 "untrained", "during training" every train.eval_every steps, "trained" at the end; a
resumed run may repeat a step: the last line of a step wins).  Writes DIR/loss.png (the objective and each head's
loss against the step) and DIR/dice.png (mean foreground Dice and each dataset's against the step), one curve set
per log (named by the log's folder), plus the gnuplot scripts and data files that drew them.  gnuplot draws, as in
benchmarks/scaling_collect.py.  Exit status 1 with a message naming the file when a log is unreadable or holds
neither losses nor evaluations.

The module also serves benchmarks/compare_collect.py: read_metrics() parses one log.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def fail(msg):
    print("plot_metrics: " + msg, file=sys.stderr)
    sys.exit(1)


def read_metrics(path):
    """(losses, evals) of one metrics.jsonl: losses {step: line}, evals {step: line}, each sorted by step."""
    losses, evals = {}, {}
    try:
        with open(path) as f:
            for n, text in enumerate(f, 1):
                text = text.strip()
                if not text:
                    continue
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    fail(f"{path}: line {n} is not JSON ({e})")
                if "step" not in rec:
                    continue
                if "mean_dice" in rec:
                    evals[int(rec["step"])] = rec
                elif "loss" in rec:
                    losses[int(rec["step"])] = rec
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if not losses and not evals:
        fail(f"{path}: no loss or evaluation lines (is it a mednet metrics.jsonl?)")
    return dict(sorted(losses.items())), dict(sorted(evals.items()))


def gnuplot(script, cwd):
    gp = shutil.which("gnuplot")
    if not gp:
        fail("gnuplot is not installed (apt-get install gnuplot-nox, listed in .ci/install-deps)")
    res = subprocess.run([gp, script], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"gnuplot failed on {os.path.join(cwd, script)}: {res.stderr.strip()}")


def quote(s):
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("_", "\\\\_")


def curves(runs, kind):
    """Write one data file per curve: (file, title, is_main) for kind 'loss' or 'dice'."""
    out = []
    for name, (losses, evals), out_dir, i in runs:
        table = losses if kind == "loss" else evals
        main_key, sub_key = ("loss", "head_loss") if kind == "loss" else ("mean_dice", "dice")
        if not table:
            continue
        keys = sorted({k for rec in table.values() for k in rec.get(sub_key, {})})
        fn = f"{kind}_{i}.dat"
        with open(os.path.join(out_dir, fn), "w") as f:
            f.write("# step %s %s\n" % (main_key, " ".join(keys)))
            for step, rec in table.items():
                vals = [rec.get(main_key, -1)] + [rec.get(sub_key, {}).get(k, float("nan")) for k in keys]
                f.write("%d %s\n" % (step, " ".join("%.6g" % (v if v is not None and v >= 0 else float("nan"))
                                                    for v in vals)))
        label = (name + ": ") if len(runs) > 1 else ""
        out.append((fn, 2, label + ("objective" if kind == "loss" else "mean foreground Dice"), True))
        if len(keys) > 1 or len(runs) == 1:
            for j, k in enumerate(keys):
                out.append((fn, 3 + j, label + k, False))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logs", nargs="+", help="metrics.jsonl files")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--title", default="", help="plot title")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    runs = []
    for i, p in enumerate(a.logs):
        name = os.path.basename(os.path.dirname(os.path.abspath(p))) or p
        runs.append((name, read_metrics(p), a.out, i))
    made = []
    for kind, ylabel in (("loss", "loss"), ("dice", "foreground Dice")):
        cs = curves(runs, kind)
        if not cs:
            continue
        plot = ", \\\n     ".join(
            f'"{fn}" using 1:{col} with linespoints lw {2 if main else 1} pt 7 ps {0.6 if main else 0.3} '
            f'title "{quote(t)}"' for fn, col, t, main in cs)
        with open(os.path.join(a.out, f"{kind}.gp"), "w") as f:
            f.write(f"""set terminal pngcairo size 900,560 font ",11"
set output "{kind}.png"
set title "{quote(a.title or ", ".join(r[0] for r in runs))}"
set grid
set key outside right
set xlabel "step"
set ylabel "{ylabel}"
{"set yrange [0:1]" if kind == "dice" else "set logscale y"}
plot {plot}
""")
        gnuplot(f"{kind}.gp", a.out)
        made.append(os.path.join(a.out, f"{kind}.png"))
    for m in made:
        print("wrote", m)


if __name__ == "__main__":
    main()

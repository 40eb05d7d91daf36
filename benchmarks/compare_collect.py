#!/usr/bin/env python3
"""compare_collect.py DIR [--threshold T]: the table and plot of jobs/compare_transfer.sh.

DIR holds one folder per arm (scratch/, pretrained/), each with one run folder per seed (seed<k>/metrics.jsonl,
written by `mednet finetune`).  Per run, from the evaluation lines (mean foreground Dice on the fixed evaluation
crops of the target dataset; with sampler.holdout > 0 only the held-out slab, whose labels training never sees):
  final          the Dice after the last step ("trained");
  best           the highest Dice of any evaluation after step 0;
  early          the Dice at the first evaluated step at or after --early x the run's steps (default 25 %);
  steps to T     the first evaluated step whose Dice is >= T (none when never reached: "-");
and per arm the mean and sample standard deviation over the seeds of early, final and best, the range (min..max)
of early and final, how many runs reached T and the median of their steps, the mean of the paired differences
(pretrained - scratch, same seed), and whether the acceptance rule holds: the pre-trained arm ahead by at least
--margin (default 0.05) in mean Dice at the early step with the two arms' ranges there not overlapping, and still
ahead in mean final Dice.  Writes
DIR/summary/: table.txt (what is printed), table.csv, summary.json, dice.png (Dice against the step: every run thin,
each arm's mean over seeds thick) and the gnuplot script and data it came from.  Exit status 1 naming the folder when
an arm has no run or a run has no evaluation.
"""
import argparse
import csv
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_metrics import fail, gnuplot, read_metrics  # noqa: E402

ARMS = ("scratch", "pretrained")


def mean_sd(xs):
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def fmt(m, s):
    return "-" if math.isnan(m) else f"{m:.4f} ± {s:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--threshold", type=float, default=0.3, help="Dice threshold for 'steps to T' (default 0.3)")
    ap.add_argument("--early", type=float, default=0.25, help="share of the steps for the early Dice (default 0.25)")
    ap.add_argument("--margin", type=float, default=0.05, help="early lead the acceptance rule asks (default 0.05)")
    a = ap.parse_args()
    runs = {}
    for arm in ARMS:
        d = os.path.join(a.dir, arm)
        seeds = sorted((s for s in os.listdir(d) if s.startswith("seed")) if os.path.isdir(d) else [],
                       key=lambda s: int(s[4:]) if s[4:].isdigit() else 0)
        if not seeds:
            fail(f"{d}: no seed<k>/ run folders (did jobs/compare_transfer.sh run?)")
        runs[arm] = []
        for s in seeds:
            path = os.path.join(d, s, "metrics.jsonl")
            _, evals = read_metrics(path)
            curve = [(st, r["mean_dice"]) for st, r in evals.items() if r["mean_dice"] >= 0]
            if not curve or curve[-1][0] == 0:
                fail(f"{path}: no evaluation after training (train.eval_batches must be > 0)")
            after = [v for st, v in curve if st > 0]
            reach = next((st for st, v in curve if st > 0 and v >= a.threshold), None)
            early = next((st, v) for st, v in curve if st > 0 and st >= a.early * curve[-1][0])
            runs[arm].append({"arm": arm, "seed": s[4:], "steps": curve[-1][0], "untrained": curve[0][1],
                              "early_step": early[0], "early": early[1], "final": curve[-1][1], "best": max(after),
                              "steps_to_threshold": reach, "curve": curve})
    out = os.path.join(a.dir, "summary")
    os.makedirs(out, exist_ok=True)
    lines = [f"Fine-tuning from scratch vs from a pre-trained encoder: held-out mean foreground Dice "
             f"({len(runs['scratch'])} + {len(runs['pretrained'])} runs, threshold T = {a.threshold:g})", "",
             f"{'arm':<11} {'seed':>5} {'steps':>6} {'step 0':>7} {'early':>12} {'final':>7} {'best':>7} "
             f"{'steps to T':>11}"]
    for arm in ARMS:
        for r in runs[arm]:
            lines.append(f"{arm:<11} {r['seed']:>5} {r['steps']:>6} {r['untrained']:>7.4f} "
                         f"{r['early']:>7.4f} @{r['early_step']:<4} {r['final']:>7.4f} "
                         f"{r['best']:>7.4f} {r['steps_to_threshold'] if r['steps_to_threshold'] else '-':>11}")
    lines += ["", f"{'arm':<11} {'early (mean ± sd)':>18} {'early range':>14} {'final (mean ± sd)':>18} "
              f"{'final range':>14} {'best (mean ± sd)':>18} {'reached T':>10} {'median steps to T':>18}"]
    summary = {"threshold": a.threshold, "arms": {}}
    for arm in ARMS:
        rs = runs[arm]
        em, es = mean_sd([r["early"] for r in rs])
        fm, fs = mean_sd([r["final"] for r in rs])
        bm, bs = mean_sd([r["best"] for r in rs])
        erange = (min(r["early"] for r in rs), max(r["early"] for r in rs))
        frange = (min(r["final"] for r in rs), max(r["final"] for r in rs))
        reached = [r["steps_to_threshold"] for r in rs if r["steps_to_threshold"]]
        med = statistics.median(reached) if reached else None
        summary["arms"][arm] = {"runs": len(rs), "early_mean": em, "early_sd": es, "early_range": erange,
                                "final_mean": fm, "final_sd": fs, "final_range": frange, "best_mean": bm,
                                "best_sd": bs, "reached": len(reached), "median_steps_to_threshold": med}
        lines.append(f"{arm:<11} {fmt(em, es):>18} {erange[0]:>6.4f}..{erange[1]:<6.4f} {fmt(fm, fs):>18} "
                     f"{frange[0]:>6.4f}..{frange[1]:<6.4f} {fmt(bm, bs):>18} {len(reached):>4} of {len(rs):<3} "
                     f"{med if med is not None else '-':>18}")
    by_seed = {r["seed"]: r for r in runs["scratch"]}
    diffs = [(r["final"] - by_seed[r["seed"]]["final"], r["best"] - by_seed[r["seed"]]["best"],
              r["early"] - by_seed[r["seed"]]["early"]) for r in runs["pretrained"] if r["seed"] in by_seed]
    if diffs:
        dm, ds = mean_sd([d[0] for d in diffs])
        bm, bs = mean_sd([d[1] for d in diffs])
        em, es = mean_sd([d[2] for d in diffs])
        wins = sum(d[0] > 0 for d in diffs)
        ewins = sum(d[2] > 0 for d in diffs)
        summary["paired"] = {"pairs": len(diffs), "final_diff_mean": dm, "final_diff_sd": ds, "best_diff_mean": bm,
                             "best_diff_sd": bs, "pretrained_final_higher": wins, "early_diff_mean": em,
                             "early_diff_sd": es, "pretrained_early_higher": ewins}
        lines += ["", f"paired by seed (pretrained - scratch), {len(diffs)} pairs: early {em:+.4f} ± {es:.4f}, "
                  f"final {dm:+.4f} ± {ds:.4f}, best {bm:+.4f} ± {bs:.4f}; pretrained higher in {ewins} of "
                  f"{len(diffs)} early, {wins} of {len(diffs)} final"]
    sa, pa = summary["arms"]["scratch"], summary["arms"]["pretrained"]
    lead_e, lead_f = pa["early_mean"] - sa["early_mean"], pa["final_mean"] - sa["final_mean"]
    apart = pa["early_range"][0] > sa["early_range"][1]
    ok = lead_e >= a.margin and apart and lead_f > 0 and sa["runs"] >= 3 and pa["runs"] >= 3
    summary["acceptance"] = {"early_share": a.early, "margin": a.margin, "early_lead": lead_e,
                             "early_ranges_apart": apart, "final_lead": lead_f, "met": ok}
    lines += [f"acceptance (>= 3 seeds per arm, pretrained ahead by >= {a.margin:g} at {100 * a.early:g} % of the "
              f"steps with the ranges apart, still ahead at the end): lead {lead_e:+.4f} early (ranges "
              f"{'apart' if apart else 'overlap'}), {lead_f:+.4f} final -> {'met' if ok else 'NOT met'}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    open(os.path.join(out, "table.txt"), "w").write(text)
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "steps", "dice_step0", "early_step", "dice_early", "dice_final", "dice_best",
                    "steps_to_threshold"])
        for arm in ARMS:
            for r in runs[arm]:
                w.writerow([arm, r["seed"], r["steps"], r["untrained"], r["early_step"], r["early"], r["final"],
                            r["best"], r["steps_to_threshold"] or ""])
    summary["runs"] = [{k: v for k, v in r.items()} for arm in ARMS for r in runs[arm]]
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
    # The plot: every run thin, each arm's mean over seeds (at the steps every seed evaluated) thick.
    plot, colour = [], {"scratch": "#d62728", "pretrained": "#1f77b4"}
    for arm in ARMS:
        for r in runs[arm]:
            fn = f"{arm}_seed{r['seed']}.dat"
            with open(os.path.join(out, fn), "w") as f:
                f.writelines(f"{st} {v:.6g}\n" for st, v in r["curve"])
            plot.append(f'"{fn}" using 1:2 with lines lw 1 lc rgb "{colour[arm]}" notitle')
        common = sorted(set.intersection(*[set(st for st, _ in r["curve"]) for r in runs[arm]]))
        with open(os.path.join(out, f"{arm}_mean.dat"), "w") as f:
            for st in common:
                f.write(f"{st} {statistics.fmean(dict(r['curve'])[st] for r in runs[arm]):.6g}\n")
        plot.append(f'"{arm}_mean.dat" using 1:2 with linespoints lw 3 pt 7 lc rgb "{colour[arm]}" '
                    f'title "{arm} (mean of {len(runs[arm])} seeds)"')
    plot.append(f'{a.threshold} with lines dt 2 lc rgb "gray" title "T = {a.threshold:g}"')
    with open(os.path.join(out, "dice.gp"), "w") as f:
        f.write('set terminal pngcairo size 900,560 font ",11"\nset output "dice.png"\n'
                'set title "held-out Dice of the target task: from scratch vs pre-trained encoder"\n'
                'set grid\nset key bottom right\nset xlabel "fine-tuning step"\nset ylabel "mean foreground Dice"\n'
                'set yrange [0:1]\nplot ' + ", \\\n     ".join(plot) + "\n")
    gnuplot("dice.gp", out)
    print(f"wrote {out}/table.txt, table.csv, summary.json, dice.png")


if __name__ == "__main__":
    main()

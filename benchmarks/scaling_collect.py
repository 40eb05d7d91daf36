#!/usr/bin/python3
"""scaling_collect.py: the table, plots, time-to-quality and projection of a scaling study's results folder.

    benchmarks/scaling_collect.py DIR [--warmup N] [--loss-target L] [--alpha-us A --beta-gbs B] [--algo ring|tree]
                                  [--depths 10,18,50] [--depth-runs DIR18,DIR50] [--compute 18=T,...] [--no-plots]

DIR holds one folder per run, each with mednet's metrics.jsonl (jobs/scaling_study.sh and jobs/scaling_sweep.sh
write DIR/P<P>/), and optionally DIR/study.env (mode, warm-up) and DIR/P<P>/allreduce.txt (benchmarks/
bench_allreduce on the same ranks).  Writes DIR/summary/: table.txt (what is printed), table.csv, table.json,
throughput.png (samples/s and parallel efficiency vs P), time_split.png (stacked step time per P), projection.png
(projected efficiency to 8,192 ranks), and the gnuplot scripts that drew them.  The projection takes each depth's
single-rank compute from this study (its own depth), --depth-runs (P = 1 studies of other depths), --compute, or
else scales it by the encoder's parameter count and says so.

Per run, over the measured steps (the first --warmup steps of the run are excluded; default from study.env, else 2):
  samples/s      global batch / median step time (rank 0's step, the slowest rank's parts);
  compute        forward + backward + optimiser, without the reducer's time inside the backward hooks;
  exposed comm   communication the step waited for: the reducer's hook time in backward plus the gradient path after
                 backward (t_busy + t_comm); hidden comm = the buckets' in-flight time not spent in either;
  imbalance      slowest minus fastest rank's compute: the part of exposed comm spent waiting for the slowest rank;
  data           the batch source;
  checkpoint     the run's checkpoint writes after warm-up, amortised over its measured steps (the sweep writes one);
  efficiency     (samples/s / P) / (samples/s / P of the smallest run): weak and strong scaling alike;
  busbw          all-reduce bus bandwidth 2 (P - 1) / P * bytes / time: in the step (encoder bytes over the buckets'
                 in-flight time, a lower bound) and, where DIR/P<P>/allreduce.txt exists, a blocking MPI_Allreduce
                 of the largest size measured there.
Exit status 1 with a message naming the file when a run folder has no usable metrics.
"""
import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scaling_model as sm  # noqa: E402


def fail(msg):
    print(f"scaling_collect.py: {msg}", file=sys.stderr)
    sys.exit(1)


def median(v):
    v = sorted(v)
    if not v:
        return float("nan")
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def read_env(path):
    env = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def read_run(folder, warmup):
    """One run's figures from folder/metrics.jsonl, or fail naming the file."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        fail(f"{path}: no metrics (did the run start? see {folder}/mednet.log or the job's output)")
    plan, steps, ckpts = None, [], []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{i}: not JSON ({e})")
            if "plan" in row:
                plan = row["plan"]
                steps, ckpts = [], []  # a second plan line: the run was restarted; keep the last attempt
            elif "t_ckpt" in row:
                ckpts.append(row)
            elif "t_step" in row:
                steps.append(row)
    if plan is None:
        fail(f"{path}: no plan line (metrics of a mednet older than the scaling study?)")
    first = plan["start_step"] + warmup
    meas = [s for s in steps if s["step"] > first]
    if not meas:
        fail(f"{path}: {len(steps)} logged step(s), none after the {warmup} warm-up step(s) "
             "(run more steps, or lower --warmup)")
    for key in ("t_busy", "t_update", "t_inflight", "t_wait"):
        if key not in meas[0]:
            fail(f"{path}: steps carry no '{key}' (metrics of a mednet older than the scaling study?)")
    p, gb = plan["ranks"], plan["global_batch"]
    t_step = median([s["t_step"] for s in meas])
    ck = sum(c["t_ckpt"] for c in ckpts if c["step"] > first) / len(meas)
    enc_bytes = 4.0 * plan["encoder_params"]
    inflight = median([s["t_inflight"] for s in meas])
    r = {
        "folder": os.path.basename(folder.rstrip("/")),
        "P": p, "nodes": plan["nodes"], "ranks_per_node": plan["ranks_per_node"], "threads": plan["threads"],
        "cores": plan["cores"], "batch": plan["batch"], "global_batch": gb, "depth": plan["depth"],
        "steps": len(meas), "t_step": t_step, "samples_per_s": gb / t_step,
        "compute": median([s["t_compute"] - s["t_busy"] + s["t_update"] for s in meas]),
        "comm": median([s["t_comm"] + s["t_busy"] for s in meas]),
        "hidden": median([max(0.0, s["t_inflight"] - s["t_wait"] - s["t_busy"]) for s in meas]),
        "data": median([s["t_data"] for s in meas]),
        "imbalance": median([s["t_compute"] - s.get("t_compute_min", s["t_compute"]) for s in meas]),
        "ckpt": ck,
        "ckpt_write": max([c["t_ckpt"] for c in ckpts], default=float("nan")),
        "ckpt_bytes": max([c.get("ckpt_bytes", 0) for c in ckpts], default=0),
        "busbw_step": (enc_bytes / inflight * 2 * (p - 1) / p / 1e9) if p > 1 and inflight > 0 else float("nan"),
        "busbw_bench": float("nan"),
        "oversubscribed": plan["ranks_per_node"] * plan["threads"] > plan["cores"],
        "bucket_bytes": [4 * b for b in plan["bucket_floats"]],
        "head_bytes": [4 * h for h in plan["head_params"].values()],
        "datasets": len(plan["head_params"]),
        "losses": [(s["step"] - plan["start_step"], s["loss"]) for s in steps if s["loss"] >= 0],
        "step_times": [s["t_step"] for s in steps],
        "t_update": median([s["t_update"] for s in meas]),
        "blis": plan.get("blis", "?"),
        "alpha": float("nan"), "beta": float("nan"),
    }
    bench = os.path.join(folder, "allreduce.txt")
    if os.path.exists(bench) and p > 1:
        pts = sm.parse_bench(bench)
        if pts:
            n, t = pts[-1]
            r["busbw_bench"] = n / t * 2 * (p - 1) / p / 1e9
        if len(pts) >= 2:
            r["alpha"], r["beta"] = sm.fit_alpha_beta(pts, p, "ring")
    return r


def fmt_table(runs, env):
    base = runs[0]
    lines = []
    cpu = env.get("cpu", "?")
    lines.append(f"{env.get('mode', '?')} scaling, {env.get('launcher', '?')} launch on {env.get('host', '?')} "
                 f"({cpu}, {base['cores']} cores, BLIS {base['blis']}), resnet{base['depth']}, "
                 f"{base['threads']} thread(s) per rank; medians over the measured steps after "
                 f"{env.get('warmup', '?')} warm-up step(s); times in seconds per step")
    head = (f"{'P':>4} {'nodes':>5} {'gbatch':>6} {'samples/s':>9} {'step':>7} {'compute':>7} {'comm':>7} "
            f"{'hidden':>7} {'imbal':>6} {'data':>6} {'ckpt':>6} {'eff':>6} {'busbw step':>10} {'busbw MPI':>9}  note")
    lines.append(head)
    lines.append("-" * len(head))
    for r in runs:
        eff = (r["samples_per_s"] / r["P"]) / (base["samples_per_s"] / base["P"])
        r["efficiency"] = eff
        bw = lambda x: f"{x:.3f}" if math.isfinite(x) else "-"  # noqa: E731
        note = "OVERSUBSCRIBED" if r["oversubscribed"] else ""
        lines.append(f"{r['P']:>4} {r['nodes']:>5} {r['global_batch']:>6} {r['samples_per_s']:>9.2f} "
                     f"{r['t_step']:>7.3f} {r['compute']:>7.3f} {r['comm']:>7.3f} {r['hidden']:>7.3f} "
                     f"{r['imbalance']:>6.3f} "
                     f"{r['data']:>6.3f} {r['ckpt']:>6.3f} {100 * eff:>5.1f}% {bw(r['busbw_step']):>10} "
                     f"{bw(r['busbw_bench']):>9}  {note}")
    lines.append("comm = exposed communication (waited for, including imbal = waiting for the slowest rank's "
                 "compute); hidden = all-reduce in flight behind backward; ckpt = "
                 "checkpoint writes amortised per measured step; busbw in GB/s (step: encoder bytes over the "
                 "buckets' in-flight time; MPI: bench_allreduce's blocking MPI_Allreduce)")
    if any(r["oversubscribed"] for r in runs):
        lines.append("OVERSUBSCRIBED: more ranks x threads than cores on a node; those figures measure the "
                     "time-sharing of the cores as much as mednet")
    ck = [r for r in runs if math.isfinite(r["ckpt_write"])]
    if ck:
        w = max(ck, key=lambda r: r["ckpt_write"])
        lines.append(f"checkpoint write (gather + HDF5 + fsync + rename): up to {w['ckpt_write']:.2f} s for "
                     f"{w['ckpt_bytes'] / 1048576:.1f} MiB (P={w['P']})")
    return lines


def time_to_quality(runs, target, min_steps=20):
    """Steps, samples and seconds until the loss (mean of 3 logged steps) first reaches target, per run."""
    lines = []
    longest = max(len(r["losses"]) for r in runs)
    if longest < min_steps:
        return [f"time to quality: skipped (runs of {longest} logged steps; needs {min_steps} or more: "
                "run longer with -s)"]
    smooth = {}
    for r in runs:
        l = [x for _, x in r["losses"]]
        smooth[r["P"]] = [(r["losses"][i][0], sum(l[max(0, i - 2):i + 1]) / len(l[max(0, i - 2):i + 1]))
                          for i in range(len(l))]
    if target is None:
        target = max(min(v for _, v in s) for s in smooth.values())
        how = "the best loss every run reached"
    else:
        how = "given"
    lines.append(f"time to quality: loss target {target:.4f} ({how}; loss = mean of 3 logged steps)")
    lines.append(f"{'P':>4} {'steps':>6} {'samples':>8} {'seconds':>8}")
    for r in runs:
        hit = next((st for st, v in smooth[r["P"]] if v <= target), None)
        if hit is None:
            lines.append(f"{r['P']:>4} {'not reached':>24}")
            continue
        secs = sum(r["step_times"][:hit])
        lines.append(f"{r['P']:>4} {hit:>6} {hit * r['global_batch']:>8} {secs:>8.1f}")
    return lines


def validate(runs):
    """The projection model against each measured run: (a) the whole step from the smallest run's compute per sample
    (times max(1, ranks x threads / cores)) plus its local gradient-path time, and the run's fitted network;
    (b) the exposed communication alone, from the run's own measured compute (what the projection extrapolates)."""
    base = runs[0]
    per_sample = (base["compute"] - base["t_update"]) / base["batch"]
    local = base["comm"] if base["P"] == 1 else 0.0  # copies and scaling of the gradient path, no messages
    lines = ["projection model against the measured runs (ring all-reduce with the run's bench_allreduce fit; "
             "step: compute from the smallest run per sample x max(1, ranks x threads / cores); comm: exposed "
             "communication from the run's own compute):"]
    lines.append("(comm here = exposed communication minus the imbalance, which no network model predicts)")
    lines.append(f"{'P':>4} {'alpha us':>9} {'GB/s':>7} | {'step':>6} {'model':>6} {'err':>7} | {'comm':>6} "
                 f"{'overlap':>7} {'err':>7} {'no-ovl':>7} {'err':>7}")
    errs = {"step": [], "overlap": [], "plain": []}
    for r in runs:
        if r["P"] < 2:
            continue
        if not math.isfinite(r["alpha"]):
            lines.append(f"{r['P']:>4}  (no allreduce.txt: not validated)")
            continue
        over = max(1.0, r["ranks_per_node"] * r["threads"] / r["cores"])
        compute = (per_sample * r["batch"] + base["t_update"]) * over
        a, b = r["alpha"], r["beta"]
        kw = dict(buckets_bytes=r["bucket_bytes"], head_bytes=r["head_bytes"][:1], datasets=base["datasets"],
                  alpha=a, beta=b, algo="ring")
        step = sm.step_time(r["P"], compute=compute, overlap=True, data=r["data"], **kw)[0] + local
        _, eo, ro = sm.step_time(r["P"], compute=r["compute"], overlap=True, **kw)
        _, ep, rp = sm.step_time(r["P"], compute=r["compute"], overlap=False, **kw)
        co, cp = eo + ro + local, ep + rp + local
        meas_comm = max(1e-9, r["comm"] - r["imbalance"])
        e_s, e_o, e_p = step / r["t_step"] - 1, co / meas_comm - 1, cp / meas_comm - 1
        errs["step"].append(abs(e_s))
        errs["overlap"].append(abs(e_o))
        errs["plain"].append(abs(e_p))
        lines.append(f"{r['P']:>4} {a * 1e6:>9.1f} {1 / b / 1e9:>7.3f} | {r['t_step']:>6.3f} {step:>6.3f} "
                     f"{100 * e_s:>+6.1f}% | {meas_comm:>6.3f} {co:>7.3f} {100 * e_o:>+6.1f}% {cp:>7.3f} "
                     f"{100 * e_p:>+6.1f}%")
    if errs["step"]:
        m = lambda v: 100 * sum(v) / len(v)  # noqa: E731
        lines.append(f"mean |error|: step {m(errs['step']):.1f}%; exposed comm with overlap {m(errs['overlap']):.1f}%, "
                     f"without {m(errs['plain']):.1f}%")
    return lines


def gnuplot(script, cwd):
    gp = shutil.which("gnuplot")
    if not gp:
        fail("gnuplot is not installed (apt-get install gnuplot-nox, listed in .ci/install-deps); "
             "use --no-plots for the table alone")
    res = subprocess.run([gp, script], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"gnuplot failed on {script}: {res.stderr.strip()}")


def plots(runs, proj, out, title):
    with open(os.path.join(out, "runs.dat"), "w") as f:
        f.write("# P samples_per_s ideal efficiency compute comm data ckpt\n")
        b = runs[0]
        for r in runs:
            ideal = b["samples_per_s"] * r["P"] / b["P"]
            f.write(f"{r['P']} {r['samples_per_s']:.6g} {ideal:.6g} {100 * r['efficiency']:.6g} {r['compute']:.6g} "
                    f"{r['comm']:.6g} {r['data']:.6g} {r['ckpt']:.6g}\n")
    ps = " ".join(str(r["P"]) for r in runs)
    with open(os.path.join(out, "throughput.gp"), "w") as f:
        f.write(f"""set terminal pngcairo size 1200,480 font ",11"
set output "throughput.png"
set multiplot layout 1,2 title "{title}"
set logscale x 2
set xtics ({", ".join(str(r["P"]) for r in runs)})
set xrange [{runs[0]["P"] / 1.3}:{runs[-1]["P"] * 1.3}]
set grid
set key top left
set xlabel "ranks P"
set ylabel "samples/s"
set yrange [0:*]
plot "runs.dat" using 1:2 with linespoints lw 2 pt 7 title "measured", \\
     "runs.dat" using 1:3 with lines dt 2 lw 2 title "ideal (linear from P={runs[0]["P"]})"
set ylabel "parallel efficiency (%)"
set yrange [0:110]
set key bottom left
plot "runs.dat" using 1:4 with linespoints lw 2 pt 7 title "efficiency vs P={runs[0]["P"]}", \\
     100 with lines dt 2 title "100 %"
unset multiplot
""")
    with open(os.path.join(out, "time_split.gp"), "w") as f:
        f.write(f"""set terminal pngcairo size 800,500 font ",11"
set output "time_split.png"
set title "step time split per rank count (P = {ps})"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.6
set ylabel "seconds per step (median)"
set xlabel "ranks P"
set yrange [0:*]
set key outside right top
set grid ytics
plot "runs.dat" using 5:xtic(1) title "compute", "" using 6 title "exposed comm", \\
     "" using 7 title "data", "" using 8 title "checkpoint"
""")
    gnuplot("throughput.gp", out)
    gnuplot("time_split.gp", out)
    if proj:
        depths = sorted(proj)
        with open(os.path.join(out, "projection.dat"), "w") as f:
            f.write("# P " + " ".join(f"r{d}_ovl r{d}_plain" for d in depths) + "\n")
            for i, p in enumerate(row[0] for row in proj[depths[0]]):
                f.write(f"{p} " + " ".join(f"{100 * proj[d][i][2]:.4g} {100 * proj[d][i][4]:.4g}" for d in depths)
                        + "\n")
        curves = []
        for k, d in enumerate(depths):
            curves.append(f'"projection.dat" using 1:{2 + 2 * k} with linespoints lw 2 lc {k + 1} pt 7 '
                          f'title "resnet{d} overlap"')
            curves.append(f'"projection.dat" using 1:{3 + 2 * k} with linespoints lw 2 lc {k + 1} dt 2 pt 6 '
                          f'title "resnet{d} no overlap"')
        with open(os.path.join(out, "projection.gp"), "w") as f:
            f.write(f"""set terminal pngcairo size 900,520 font ",11"
set output "projection.png"
set title "projected weak-scaling efficiency ({PROJ_TITLE})"
set logscale x 2
set xrange [1:10000]
set format x "%.0f"
set xlabel "ranks P"
set ylabel "parallel efficiency (%)"
set yrange [0:105]
set grid
set key bottom left
plot {", ".join(curves)}
""")
        gnuplot("projection.gp", out)


PROJ_TITLE = ""


def main():
    global PROJ_TITLE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--loss-target", type=float, default=None)
    ap.add_argument("--alpha-us", type=float, default=sm.HDR_ALPHA * 1e6)
    ap.add_argument("--beta-gbs", type=float, default=1 / sm.HDR_BETA / 1e9)
    ap.add_argument("--algo", default="ring", choices=["ring", "tree"])
    ap.add_argument("--depths", default="10,18,50", help="depths to project (compute: measured, see --compute)")
    ap.add_argument("--compute", default="", help="single-rank compute per step for depths without a run, "
                    "e.g. 18=1.4,50=3.0 (seconds at the run's per-rank batch)")
    ap.add_argument("--depth-runs", default="", help="results folders of single-rank runs of other depths (same "
                    "batch and crop), comma separated: their compute per step feeds the projection")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    if not os.path.isdir(args.dir):
        fail(f"{args.dir}: not a folder")
    env = read_env(os.path.join(args.dir, "study.env"))
    warmup = args.warmup if args.warmup is not None else int(env.get("warmup", 2))
    folders = [os.path.join(args.dir, d) for d in os.listdir(args.dir)
               if os.path.isdir(os.path.join(args.dir, d)) and d != "summary"]
    folders = [d for d in folders if os.path.exists(os.path.join(d, "metrics.jsonl"))
               or os.path.basename(d).startswith("P")]
    if not folders:
        fail(f"{args.dir}: no run folders (P<P>/metrics.jsonl)")
    runs = sorted((read_run(d, warmup) for d in folders), key=lambda r: r["P"])
    out = os.path.join(args.dir, "summary")
    os.makedirs(out, exist_ok=True)
    lines = fmt_table(runs, env)
    lines.append("")
    lines += time_to_quality(runs, args.loss_target)
    lines.append("")
    lines += validate(runs)
    # Projection: the measured depth from the smallest run; other depths from --compute, else scaled by the
    # encoder's parameter count (a stated rough guess: FLOPs do not follow parameters exactly).
    base = runs[0]
    per_rank = (base["compute"]) / max(1.0, base["ranks_per_node"] * base["threads"] / base["cores"])
    comp = {base["depth"]: per_rank}
    given = {}
    for item in filter(None, args.compute.split(",")):
        d, t = item.split("=")
        given[int(d)] = float(t)
    for d in filter(None, args.depth_runs.split(",")):
        sub = [os.path.join(d, x) for x in sorted(os.listdir(d)) if os.path.isdir(os.path.join(d, x)) and x != "summary"]
        if not sub:
            fail(f"{d}: no run folders")
        r = min((read_run(x, warmup) for x in sub), key=lambda r: r["P"])
        if r["batch"] != base["batch"]:
            fail(f"{d}: per-rank batch {r['batch']}, not this study's {base['batch']}: compute would not compare")
        comp[r["depth"]] = r["compute"] / max(1.0, r["ranks_per_node"] * r["threads"] / r["cores"])
    comp.update(given)
    depths = [int(d) for d in args.depths.split(",") if d]
    guessed = []
    for d in depths:
        if d not in comp:
            comp[d] = per_rank * sm.ENCODER_PARAMS[d] / sm.ENCODER_PARAMS[base["depth"]]
            guessed.append(d)
    comp = {d: comp[d] for d in depths}
    alpha, beta = args.alpha_us * 1e-6, 1.0 / (args.beta_gbs * 1e9)
    proj = sm.projection(comp, alpha, beta, args.algo, datasets=base["datasets"])
    lines.append("")
    lines.append("single-rank compute per step used: " + ", ".join(
        f"resnet{d} {comp[d]:.3f} s{' (scaled by parameters, not measured)' if d in guessed else ''}"
        for d in depths) + f", per-rank batch {base['batch']}")
    lines.append(sm.format_projection(proj, alpha, beta, args.algo))
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(text + "\n")
    keys = ["P", "nodes", "ranks_per_node", "threads", "global_batch", "samples_per_s", "t_step", "compute", "comm",
            "hidden", "imbalance", "data", "ckpt", "efficiency", "busbw_step", "busbw_bench", "oversubscribed"]
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in runs:
            w.writerow([r[k] for k in keys])
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump({"env": env, "runs": [{k: r[k] for k in keys} for r in runs],
                   "projection": {str(d): rows for d, rows in proj.items()},
                   "network": {"alpha": alpha, "beta": beta, "algo": args.algo}}, f, indent=1)
    if not args.no_plots:
        PROJ_TITLE = f"{args.algo}, alpha {args.alpha_us:g} us, {args.beta_gbs:g} GB/s"
        plots(runs, proj, out, f"{env.get('mode', '?')} scaling, resnet{base['depth']}, "
              f"{env.get('host', '?')} ({base['cores']} cores)")
        print(f"plots: {out}/throughput.png, {out}/time_split.png, {out}/projection.png")


if __name__ == "__main__":
    main()

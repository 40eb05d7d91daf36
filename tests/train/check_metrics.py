#!/usr/bin/python3
"""check_metrics.py METRICS.jsonl: the loss falls and every head's foreground Dice after training is above the
untrained model's (the e2e test of `mednet pretrain`)."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
losses = [r["loss"] for r in rows if "loss" in r and r["loss"] >= 0]
evals = {r["eval"]: r for r in rows if "eval" in r}
ok = True
k = max(1, len(losses) // 5)
first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
print(f"loss: mean of the first {k} logged steps {first:.4f}, of the last {k} {last:.4f}")
if not last < first:
    print("FAIL: the loss did not fall")
    ok = False
before, after = evals["untrained"]["dice"], evals["trained"]["dice"]
for name in before:
    print(f"head {name}: foreground Dice {before[name]:.4f} -> {after[name]:.4f}")
    if not after[name] > before[name]:
        print(f"FAIL: Dice of head {name} did not rise")
        ok = False
sys.exit(0 if ok else 1)

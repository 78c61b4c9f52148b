"""A stand-in for ``lpg-meta-train`` in ``tests/test_ablation.py`` (seconds, no training).

Appends its arguments to ``<campaign>/calls.jsonl``.  A fresh run writes config.json and a
checkpoint at meta-update 3 after 40 s of wall time, then dies (exit 137, as if killed) if
its seed is 0 and finishes (meta-update 10 = num_updates) otherwise; ``--resume`` adds its
``--time-limit`` to the checkpointed wall time and finishes.
"""
import json
import os
import shlex
import sys

import numpy as np

from meta_train import checkpoint

argv = sys.argv[1:]
out = argv[argv.index("--out") + 1]
limit = float(argv[argv.index("--time-limit") + 1])
with open(os.path.join(os.path.dirname(out), "calls.jsonl"), "a") as f:
  f.write(json.dumps(argv) + "\n")
if "--resume" in argv:
  wall = checkpoint.read_header(checkpoint.list_checkpoints(out)[-1][1])["wall_time_s"]
  checkpoint.save(out, {"x": np.zeros(1)}, 10, {"wall_time_s": wall + limit})
  sys.exit(0)
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "config.json"), "w") as f:
  json.dump({"command": "lpg-meta-train " + shlex.join(argv), "config": {"num_updates": 10}}, f)
checkpoint.save(out, {"x": np.zeros(1)}, 3, {"wall_time_s": 40.0})
if argv[argv.index("--seed") + 1] == "0":
  print("killed", flush=True)
  sys.exit(137)
checkpoint.save(out, {"x": np.zeros(1)}, 10, {"wall_time_s": 50.0})

"""What the bench's training studies share: model scales, config overrides, runs through the CLI.

Every study run is the command line itself (`python -m ban_jax.main`) in its own workdir, so a
run cut by a deadline resumes from its checkpoint, and results files are rewritten whole
(through a temporary file) after every finished run.
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per scale: the shared model shape, the data shape, the steps the BAN arm gets (which fixes the
# FLOPs budget), and the learning rates swept.
SCALES = {
    "cpu": dict(width=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp=256, branches=5,
                attractor_steps=4, seq_len=128, batch=16, ban_steps=1000,
                # Started at (1.5e-3, 3e-3, 6e-3): the transformer's best was the top, 6e-3.
                learning_rates=(3e-3, 6e-3, 1.2e-2), dtype="float32"),
    "gpu": dict(width=256, layers=6, heads=8, kv_heads=8, head_dim=32, mlp=1024, branches=5,
                attractor_steps=6, seq_len=512, batch=64, ban_steps=300,
                learning_rates=(5e-4, 1e-3, 2e-3), dtype="bfloat16"),
}
SEEDS = (0, 1, 2)
FULL = dict(attention="gravity", tagging=True, positional="power_law", wells="wells")
BAN = dict(attention="dot", tagging=False, positional="rope", wells="off")


def overrides(arm: dict, scale: dict, *, steps: int, lr: float, seed: int) -> dict:
  """A run as config overrides of the `ban` or `transformer` preset (`arm["model"]`).

  Args:
    arm: model ("ban" | "transformer"), attention, tagging, positional, wells (a wells.mode),
      and optionally layers_factor (blocks = scale's layers x this).
    scale: one of SCALES.
    steps, lr, seed: the run's length, peak learning rate and seed.
  """
  a = arm
  o = {
      "seed": seed, "data.seq_len": scale["seq_len"], "train.batch_size": scale["batch"],
      "train.steps": steps, "train.log_every": 10, "optimizer.learning_rate": lr,
      "optimizer.warmup_steps": max(steps // 20, 1), "optimizer.weight_decay": 0.0,
      "eval.every_steps": steps, "eval.batch_size": 32, "eval.max_batches": 0,
      "eval.heldout_max_batches": 50, "eval.sample_length": 64,
      "checkpoint.every_steps": max(steps // 5, 1), "checkpoint.keep": 1,
      "model.d_model": scale["width"], "model.num_layers": scale["layers"] * a.get(
          "layers_factor", 1),
      "model.num_heads": scale["heads"], "model.num_kv_heads": scale["kv_heads"],
      "model.head_dim": scale["head_dim"], "model.dtype": scale["dtype"],
      "model.attention": a["attention"], "model.tagging": a["tagging"],
      "model.positional": a["positional"], "wells.mode": a["wells"],
      "wells.warmup_steps": max(steps // 20, 1),
  }
  if a["model"] == "transformer":
    o["model.mlp_dim"] = scale["mlp"]
  else:
    o.update({"model.num_branches": scale["branches"],
              "model.attractor_steps": scale["attractor_steps"], "model.unroll": True})
  return o


def load_json(path):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"runs": []}


def save_json(path, results):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_cli(model: str, workdir: str, flat: dict, deadline: float | None):
  """`python -m ban_jax.main` with the `model` preset and `flat` overrides, in `workdir`.

  Returns:
    "done", "diverged" (the CLI stopped on a non-finite loss), or None if the deadline cut it
    (rerunning resumes from its checkpoint). Any other failure raises with the CLI's stderr.
  """
  args = [sys.executable, "-m", "ban_jax.main",
          f"--config={os.path.join(REPO, 'configs', 'wiki.py')}:{model}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in flat.items()]
  timeout = None if deadline is None else max(deadline - time.time(), 1)
  try:
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         check=False)
  except subprocess.TimeoutExpired:
    return None
  if not out.returncode:
    return "done"
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  if any("diverged" in line for line in errors):
    return "diverged"
  raise RuntimeError(f"{workdir} failed:\n{out.stderr[-3000:]}")

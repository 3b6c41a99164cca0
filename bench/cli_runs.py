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
      and optionally layers_factor (blocks = scale's layers x this), tagging_source,
      attractor_steps and implicit_grad (the BAN's; the scale's steps and False otherwise), and
      extra: any further {dotted field: value}.
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
  o.update(a.get("extra", {}))
  if "tagging_source" in a:
    o["model.tagging_source"] = a["tagging_source"]
  if a["model"] == "transformer":
    o["model.mlp_dim"] = scale["mlp"]
  else:
    o.update({"model.num_branches": scale["branches"],
              "model.attractor_steps": a.get("attractor_steps", scale["attractor_steps"]),
              "model.unroll": True})
    if "implicit_grad" in a:
      o["model.implicit_grad"] = a["implicit_grad"]
  return o


def config_for(arm: dict, scale: dict, **kw):
  """The run's full config: its preset with `overrides` applied."""
  sys.path.insert(0, REPO)
  from configs import wiki  # pylint: disable=g-import-not-at-top
  c = wiki.get_config(arm["model"])
  for dotted, value in overrides(arm, scale, **kw).items():
    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def flops_per_step(arm: dict, scale: dict) -> tuple[float, int]:
  """(XLA's FLOPs of one plain train step of the arm, its parameter count); traced, not run."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ban_jax.training import budget  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  c = config_for(arm, scale, steps=1000, lr=1e-3, seed=0)
  plan = setup.build(c, 259, mesh_lib.make_mesh(c.mesh), token_bytes=jnp.ones([259]))
  params = setup.count_params(plan.abstract.params)
  flops, source = budget.train_step_flops(plan, c, params)
  if not source.startswith("XLA"):
    # Backends that only count compiled code (GPU): compile the step once to count it.
    from ban_jax.models import flops as flops_lib  # pylint: disable=g-import-not-at-top
    from ban_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
    b, t = c.train.batch_size, c.data.seq_len
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "weights" else jnp.int32)
             for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
    flops = flops_lib.compiled_flops(plan.jit_step(steps_lib.train_step), plan.abstract, batch)
  return flops, params


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


def grad_evals(records) -> float:
  """Gradient evaluations of a run: each logged interval's mean per step times its length.

  A resumed run logs again the steps after its last checkpoint: the later record of a step wins.
  """
  by_step = {r["step"]: r for r in records if "train/loss" in r}
  total, last = 0.0, 0
  for step in sorted(by_step):
    total += by_step[step].get("train/grad_evals", 1.0) * (step - last)
    last = step
  return total


def attractor_residual(records) -> float | None:
  """The BAN's relative attractor residual ‖z_T − z_{T−1}‖/‖z_T‖ at the last logged step, mean
  over layers (how far from a fixed point the configured steps leave it); None without one."""
  last = [r for r in records if any(k.endswith("attractor_residual_rel") for k in r)]
  if not last:
    return None
  values = [v for k, v in last[-1].items() if k.endswith("attractor_residual_rel")]
  return float(sum(values) / len(values))


def read_record(workdir: str, *, steps: int, scale: dict, flops: float) -> dict:
  """A finished run's numbers: final bits/byte (validation, held-out, gzip of the same bytes),
  gradient evaluations and the FLOPs they cost, median tokens/s, the attractor residual."""
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = grad_evals(records)
  rates = [r["perf/tokens_per_sec"] for r in records if "perf/tokens_per_sec" in r][1:]
  return {
      "steps": steps, "flops_per_update": flops, "grad_evals": evals,
      "train_flops": flops * evals, "tokens_trained": steps * scale["batch"] * scale["seq_len"],
      "val_bpb": final["eval/bits_per_byte"], "heldout_bpb": final.get("heldout/bits_per_byte"),
      "val_gzip_bpb": final.get("eval/gzip_bits_per_byte"),
      "tokens_per_sec": sorted(rates)[len(rates) // 2] if rates else None,
      "injected_fraction": evals / steps - 1.0,
      "attractor_residual_rel": attractor_residual(records),
  }


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


RESULTS_MD = os.path.join(REPO, "docs", "results.md")
ABLATION_JSON = os.path.join(REPO, "bench", "results", "ablation.json")


def write_results_section(name: str, text: str, path: str | None = None):
  """Puts `text` into docs/results.md as the section `name`, replacing its earlier version.

  Each study writes its own section (between `<!-- begin NAME -->` and `<!-- end NAME -->`), so
  a report rebuilt from one results file leaves the others' sections as they are.
  """
  path = path or RESULTS_MD
  begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
  block = f"{begin}\n{text.strip()}\n{end}\n"
  current = "# Results\n\nWhat the studies in bench/ measured; each section is rewritten by " \
            "its script's `--report_only`.\n\n"
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      current = f.read()
  if begin in current and end in current:
    head, rest = current.split(begin, 1)
    tail = rest.split(end, 1)[1].lstrip("\n")
    updated = head + block + ("\n" + tail if tail else "")
  else:
    updated = current.rstrip("\n") + "\n\n" + block
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(updated)
  os.replace(tmp, path)


def define_study_flags(name: str, *, ablation_help: str | None = None, seeds: bool = True):
  """The flags every training study shares: --deadline_s, --workdir (/tmp/ban_NAME), --out
  (bench/results/NAME.json), --report_only, and optionally --ablation and --seeds."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_float("deadline_s", 0, "Start no run that would end past this many seconds from "
                     "now (0: no deadline); a run cut short resumes.")
  flags.DEFINE_string("workdir", f"/tmp/ban_{name}", "Where the runs train.")
  flags.DEFINE_string("out", os.path.join(REPO, "bench", "results", f"{name}.json"),
                      "Results file (JSON, rewritten after every finished run).")
  flags.DEFINE_bool("report_only", False, "Write the plot and the results section; train "
                    "nothing.")
  if ablation_help:
    flags.DEFINE_string("ablation", ABLATION_JSON, ablation_help)
  if seeds:
    flags.DEFINE_list("seeds", ["0"], "Seeds.")


def publish(name: str, lines: list[str], png: str):
  """Prints a study's results section, writes it into docs/results.md, names the plot."""
  text = "\n".join(lines)
  print(text)
  write_results_section(name, text)
  print(f"wrote {png} and the `{name}` section of {RESULTS_MD}")

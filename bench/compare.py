r"""Side-by-side training runs on the bundled Wikipedia: same data, seed, steps and tokens.

    python bench/compare.py --experiment=attention    # transformer: dot vs gravity vs inverse_square
    python bench/compare.py --experiment=ban          # BAN vs transformer at matched parameters

Each arm trains with train_and_evaluate; the table reports validation and held-out bits/byte,
parameters, train-step throughput (median over the logged intervals, first one dropped as it
holds compilation) and XLA's FLOPs per token of the train step. Writes
bench/results/compare_<experiment>.json and .png.
"""

import json
import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ban_jax.models import flops as flops_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import setup  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import writers  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import wiki  # pylint: disable=g-import-not-at-top,wrong-import-position

_EXPERIMENT = flags.DEFINE_enum("experiment", "attention", ["attention", "ban"], "Which arms.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Train steps per arm (same for every arm).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed shared by the arms.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where runs go (default: a temporary folder).")
_OUT = flags.DEFINE_string("out", "", "Results folder (default bench/results).")


def _small_transformer(c):
  c.model = wiki.get_config("transformer").model
  c.model.update(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 mlp_dim=256, dtype="float32")
  return c


def arms(experiment: str):
  """{name: config} for one experiment, all from the smoke preset's data and schedule."""
  def base():
    c = wiki.get_config("smoke")
    c.seed = _SEED.value
    c.train.steps = _STEPS.value
    c.eval.every_steps = max(_STEPS.value // 5, 1)
    c.eval.max_batches = 0            # the whole validation split
    c.eval.heldout_max_batches = 0
    c.checkpoint.every_steps = 10 ** 9
    c.checkpoint.keep = 1
    return c
  out = {}
  if experiment == "attention":
    for attention in ("dot", "gravity", "inverse_square"):
      c = _small_transformer(base())
      c.model.attention = attention
      out[attention] = c
  else:
    c = base()
    c.model.num_branches = 5          # N·width² branch params = the transformer MLP's 8·width²
    out["ban"] = c
    out["transformer"] = _small_transformer(base())
  return out


def flops_per_token(c, vocab_size: int) -> float:
  """XLA's FLOP count of one compiled train step, per token."""
  plan = setup.build(c, vocab_size, mesh_lib.make_mesh(c.mesh),
                     token_bytes=jnp.ones([vocab_size], jnp.float32))
  b, t = c.train.batch_size, c.data.seq_len
  batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "weights" else jnp.int32)
           for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
  return flops_lib.compiled_flops(plan.jit_step(steps_lib.train_step), plan.abstract,
                                  batch) / (b * t)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  out_dir = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  os.makedirs(out_dir, exist_ok=True)
  root = _WORKDIR.value or tempfile.mkdtemp(prefix=f"ban_compare_{_EXPERIMENT.value}_")
  results = {}
  for name, c in arms(_EXPERIMENT.value).items():
    workdir = os.path.join(root, name)
    print(f"[compare] {name}: {c.train.steps} steps in {workdir}", flush=True)
    final = train.train_and_evaluate(c, workdir)
    recs = writers.read_metrics(workdir)
    rates = [r["perf/tokens_per_sec"] for r in recs if "perf/tokens_per_sec" in r][1:]
    results[name] = {
        "params": final["num_params"],
        "val_bpb": final["eval/bits_per_byte"],
        "heldout_bpb": final.get("heldout/bits_per_byte"),
        "tokens_per_sec": float(np.median(rates)),
        "flops_per_token": flops_per_token(c, 259),
        "curve": [(r["step"], r["eval/bits_per_byte"]) for r in recs if "eval/bits_per_byte" in r],
        "model": c.model.to_dict(),
    }
    print(f"[compare]   val bpb {results[name]['val_bpb']:.4f}", flush=True)
    # The run's own diagnostics (gravity masses, BAN focus usage), kept beside the table.
    for plot_name in ("mass_heatmap.png", "focus_usage.png"):
      src = os.path.join(workdir, plot_name)
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(
            out_dir, f"compare_{_EXPERIMENT.value}_{name}_{plot_name}"))
  meta = {"experiment": _EXPERIMENT.value, "steps": _STEPS.value, "seed": _SEED.value,
          "tokens_per_arm": _STEPS.value * 16 * 128, "backend": jax.default_backend(),
          "jax": jax.__version__, "results": results}
  path = os.path.join(out_dir, f"compare_{_EXPERIMENT.value}.json")
  with open(path, "w") as f:
    json.dump(meta, f, indent=2)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in results.items():
    ax.plot(*zip(*r["curve"]), "o-", ms=3, label=f"{name} ({r['params']:,} params)")
  ax.set(xlabel="step", ylabel="validation bits/byte", title=f"{_EXPERIMENT.value}: same data, "
         f"seed and {_STEPS.value} steps")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.savefig(path.replace(".json", ".png"), dpi=120, bbox_inches="tight")
  print(f"\n{'arm':<16}{'params':>9}{'val bpb':>9}{'held-out':>10}{'tokens/s':>10}"
        f"{'FLOPs/token':>13}")
  for name, r in results.items():
    held = f"{r['heldout_bpb']:.4f}" if r["heldout_bpb"] is not None else "-"
    print(f"{name:<16}{r['params']:>9,}{r['val_bpb']:>9.4f}{held:>10}{r['tokens_per_sec']:>10,.0f}"
          f"{r['flops_per_token']:>13,.0f}")
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)

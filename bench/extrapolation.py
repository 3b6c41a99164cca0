r"""Length extrapolation: train at T=128, score bits/byte at T = 128 ... 1024 per positional kind.

    python bench/extrapolation.py --deadline_s=1800     # trains what is missing, then evaluates
    python bench/extrapolation.py --report_only         # the plot and table from the JSON

The claim under test is the power-law field's (the AGF paper, `positional="power_law"`): that a
field depending only on distance keeps working past the training length. Arms: the BAN of the
ablation's `ban` arm (dot-product score, no tagging, no wells, CPU scale) with its positional
kind swapped: power_law (KERPLE-log, learned per head), rope, alibi, none. All arms train with
the same steps and learning rate (6e-3: the `ban` arm's best in the ablation sweep).

Evaluation splits the validation split (and the held-out text) into non-overlapping windows of
T tokens and scores every token; a longer window gives later tokens more context, so a scheme
that extrapolates scores *lower* at larger T and one that breaks scores higher. The eval batch
shrinks as T grows, so every T scores the same bytes but the tail of the last window.

Each trained run's parameters and config are exported to bench/results/extrapolation/ (about
0.4 MB each) so that later studies (the diagnostics' attention-vs-distance fits) can load them
with `ban_jax.inference.trained.load`.
"""

import json
import math
import os
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position


TRAIN_LEN = 128
EVAL_LENS = (128, 256, 512, 1024)
TOKENS_PER_EVAL_BATCH = 32 * 128
LEARNING_RATE = 6e-3
ARMS = {kind: dict(cli_runs.BAN, model="ban", positional=kind)
        for kind in ("power_law", "rope", "alibi", "none")}
EXPORT_DIR = os.path.join(REPO, "bench", "results", "extrapolation")


def _name(arm, seed):
  return f"{arm}_s{seed}"


def evaluate_lengths(workdir: str, lengths=EVAL_LENS) -> dict[str, dict[str, float]]:
  """{T: {"val_bpb", "heldout_bpb", "val_bytes"}} of the run in `workdir`, re-windowed at T."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ban_jax.training import evaluate  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  from ban_jax.training import steps  # pylint: disable=g-import-not-at-top
  out = {}
  for length in lengths:
    batch = max(TOKENS_PER_EVAL_BATCH // length, 1)
    run = trained.load(workdir, overrides={"data.seq_len": length, "eval.batch_size": batch})
    data = setup.build_data(run.config)
    mesh = setup.make_mesh(run.config)
    sharding = mesh_lib.batch_sharding(mesh)
    fn = jax.jit(lambda p, b, model=run.model: steps.eval_step(
        p, b, model=model, token_bytes=jnp.asarray(run.tokenizer.token_bytes, jnp.float32)))
    row = {}
    with mesh:
      for key, split in (("val", data.validation), ("heldout", data.heldout)):
        if split is None:
          continue
        row[f"{key}_bpb"] = evaluate.evaluate(fn, run.params, split, batch, 0,
                                              sharding)["bits_per_byte"]
    row["val_windows"] = len(data.validation.windows)
    out[str(length)] = row
    print(f"[extrapolation]   T={length}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in row.items() if k.endswith("bpb")), flush=True)
  return out


def learned_fields(name: str = "power_law_s0") -> dict | None:
  """The exponent p and scale a per head and layer that the exported power-law run learned."""
  import flax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = os.path.join(EXPORT_DIR, name, "params.msgpack")
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    flat = flax.traverse_util.flatten_dict(flax.serialization.msgpack_restore(f.read()),
                                           sep="/")
  softplus = lambda x: np.log1p(np.exp(np.asarray(x, np.float64)))
  return {k.rsplit("/", 1)[0]: {"p": softplus(flat[k]).round(4).tolist(),
                                "a": softplus(flat[k[:-len("power")] + "scale"]).round(4).tolist()}
          for k in sorted(flat) if k.endswith("power_law/power")}


def report(results: dict, out_json: str):
  """A line plot of bits/byte against evaluation length, one line per arm (mean over seeds)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
  for arm in ARMS:
    runs = [r for r in results["runs"] if r["arm"] == arm]
    if not runs:
      continue
    for ax, key in zip(axes, ("val_bpb", "heldout_bpb")):
      ys = [[r["lengths"][str(t)].get(key, math.nan) for r in runs] for t in EVAL_LENS]
      mean = [sum(y) / len(y) for y in ys]
      ax.plot(EVAL_LENS, mean, marker="o", label=f"{arm} ({len(runs)} seed(s))")
  for ax, title in zip(axes, ("validation split", "held-out text")):
    ax.set_xscale("log", base=2)
    ax.set_xticks(EVAL_LENS, [str(t) for t in EVAL_LENS])
    ax.axvline(TRAIN_LEN, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("evaluation window T (tokens; trained at 128)")
    ax.set_ylabel("bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  png = os.path.splitext(out_json)[0] + ".png"
  fig.savefig(png, dpi=120)
  plt.close(fig)
  text = ["## Length extrapolation (the power-law field's claim)\n",
           "Written by `python bench/extrapolation.py --report_only` from "
           "`bench/results/extrapolation.json`. The ablation's `ban` arm (BAN, dot-product "
           "score, no tagging, no wells, CPU scale) trained at T = 128 with each positional "
           "kind, the same steps and learning rate; validation bits/byte re-windowed at T "
           "(every token scored; a kind that extrapolates gets lower with T, since later tokens "
           "see more context). Held-out text in the JSON.\n",
           "| positional | " + " | ".join(f"T={t}" for t in EVAL_LENS) + " | 1024 vs 128 |",
           "|---" * (len(EVAL_LENS) + 2) + "|"]
  for arm in ARMS:
    runs = [r for r in results["runs"] if r["arm"] == arm]
    if not runs:
      continue
    means = [sum(r["lengths"][str(t)]["val_bpb"] for r in runs) / len(runs) for t in EVAL_LENS]
    word = "extrapolates" if means[-1] <= means[0] else "degrades"
    text.append(f"| {arm} ({len(runs)} seed{'s' * (len(runs) > 1)}) | "
                + " | ".join(f"{m:.4f}" for m in means) + f" | {means[-1] - means[0]:+.4f} "
                f"({word}) |")
  fields = learned_fields()
  if fields:
    from ban_jax.layers import positional  # pylint: disable=g-import-not-at-top
    init = [round(float(x), 3) for x in positional.power_law_power_init(4)]
    text.append(f"\nThe power-law run's learned fields (bias −p·log(1 + a·d) per head; init p = "
                f"{init}, a = 1):\n")
    for layer, v in fields.items():
      text.append(f"- {layer}: p = {v['p']}, a = {v['a']}")
    text.append("\nThe 003 paper's field is this family (an additive bias, decoupled from the "
                "token embeddings) with a fixed exponent; the learned exponents moved far from "
                "any fixed start, so a fixed-law arm would test a different, untuned field. It "
                "was not trained.")
  text.append("\n![extrapolation](../bench/results/extrapolation.png)")
  cli_runs.publish("extrapolation", text, png)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  results = cli_runs.load_json(FLAGS.out)
  if FLAGS.report_only:
    report(results, FLAGS.out)
    return
  deadline = time.time() + FLAGS.deadline_s if FLAGS.deadline_s else None
  scale = dict(cli_runs.SCALES["cpu"], seq_len=TRAIN_LEN)
  steps = scale["ban_steps"]
  for seed in (int(s) for s in FLAGS.seeds):
    for arm, spec in ARMS.items():
      if any(r["arm"] == arm and r["seed"] == seed for r in results["runs"]):
        continue
      workdir = os.path.join(FLAGS.workdir, _name(arm, seed))
      print(f"[extrapolation] {arm} seed {seed}: {steps} steps at T={TRAIN_LEN}", flush=True)
      start = time.time()
      status = cli_runs.run_cli(spec["model"], workdir, cli_runs.overrides(
          spec, scale, steps=steps, lr=LEARNING_RATE, seed=seed), deadline)
      if status is None:
        print("[extrapolation] deadline: stopped; rerun to continue", flush=True)
        return
      if status == "diverged":
        raise RuntimeError(f"{arm} seed {seed} diverged at lr {LEARNING_RATE}")
      wall = time.time() - start
      with open(os.path.join(workdir, "final_metrics.json")) as f:
        final = json.load(f)
      results["runs"].append({
          "arm": arm, "positional": spec["positional"], "seed": seed, "steps": steps,
          "lr": LEARNING_RATE, "train_len": TRAIN_LEN, "params": final["num_params"],
          "train_wall_s": wall, "lengths": evaluate_lengths(workdir)})
      trained.export(trained.load(workdir), os.path.join(EXPORT_DIR, _name(arm, seed)))
      cli_runs.save_json(FLAGS.out, results)
  report(results, FLAGS.out)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  cli_runs.define_study_flags("extrapolation")

if __name__ == "__main__":
  define_flags()
  app.run(main)

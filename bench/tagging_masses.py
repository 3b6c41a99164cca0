r"""What context tagging learned: key mass against the token's surprisal, per layer, both variants.

    python bench/tagging_masses.py --full=RUN --surprisal=RUN    # two trained workdirs
    python bench/tagging_masses.py                                # the exported pair

The paper tags tokens by how much information they carry. The learned tagging
(`tagging_source="hidden"`, softplus(Dense(h))) may or may not find that; the surprisal variant
(`tagging_source="surprisal"`) is built on it. On the validation split, for each layer: the
mean key mass in bins of the token's surprisal under the model (nats), the rank correlation of
the two, and each head's gravity mass M_h. Runs are the ablation's `full` and
`full_surprisal_tags` arms; their parameters are exported to bench/results/tagging/<arm>/.
Writes bench/results/tagging_masses.{json,png}.
"""

import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position

EXPORT_DIR = os.path.join(REPO, "bench", "results", "tagging")
ARMS = {"full": "learned from the hidden state", "full_surprisal_tags": "from surprisal"}
BINS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 100.0)


def _rank_correlation(a, b):
  import numpy as np  # pylint: disable=g-import-not-at-top
  ra = np.argsort(np.argsort(a)).astype(np.float64)
  rb = np.argsort(np.argsort(b)).astype(np.float64)
  return float(np.corrcoef(ra, rb)[0, 1])


def measure(folder: str, max_windows: int) -> dict:
  """Per layer: mass by surprisal bin, rank correlation, per-head M_h."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from ban_jax.ops.surprisal import token_surprisal  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  run = trained.load(folder)
  data = setup.build_data(run.config)
  windows = data.validation.windows
  n = min(len(windows), max_windows)
  rows = [windows[i] for i in range(n)]
  tokens, seg, pos = (np.stack([r[k] for r in rows]).astype(np.int32)
                      for k in ("inputs", "segment_ids", "positions"))
  apply = jax.jit(lambda t, sg, ps: run.model.apply(
      {"params": run.params}, t, segment_ids=sg, positions=ps, mutable=["intermediates"]))
  masses, surprisals = {}, []
  for start in range(0, n, 32):
    part = slice(start, start + 32)
    logits, state = apply(tokens[part], seg[part], pos[part])
    surprisals.append(np.asarray(token_surprisal(logits, tokens[part], seg[part])))
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    for name, value in flat.items():
      if name.endswith("key_mass"):
        masses.setdefault(name.split("/")[0], []).append(np.asarray(value[-1]))
  s = np.concatenate(surprisals)[:, 1:].ravel()        # position 0 has no prediction
  out = {"layers": {}, "windows": n}
  for layer, chunks in sorted(masses.items()):
    m = np.concatenate(chunks)[:, 1:].ravel()
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
      sel = (s >= lo) & (s < hi)
      bins.append({"lo": lo, "hi": hi, "count": int(sel.sum()),
                   "mean_mass": float(m[sel].mean()) if sel.any() else None})
    out["layers"][layer] = {"bins": bins, "rank_correlation": _rank_correlation(m, s),
                            "mass_mean": float(m.mean()), "mass_std": float(m.std())}
  flat = flax.traverse_util.flatten_dict(run.params, sep="/")
  out["head_mass"] = {k.split("/")[0]: np.log1p(np.exp(np.asarray(v))).tolist()
                      for k, v in flat.items() if k.endswith("gravity_mass_log")}
  return out


def report(results: dict, out_json: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  arms = [a for a in ARMS if a in results.get("arms", {})]
  if not arms:
    return
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for arm in arms:
    for layer, row in results["arms"][arm]["layers"].items():
      xs = [(b["lo"] + min(b["hi"], 8.0)) / 2 for b in row["bins"] if b["mean_mass"]]
      ys = [b["mean_mass"] for b in row["bins"] if b["mean_mass"]]
      axes[0].plot(xs, ys, marker="o", ls="-" if arm == "full" else "--",
                   label=f"{arm} {layer} (ρ={row['rank_correlation']:+.2f})")
    heads = results["arms"][arm]["head_mass"]
    for i, (layer, values) in enumerate(sorted(heads.items())):
      x = [h + 0.4 * (arm != "full") + 0.1 * i for h in range(len(values))]
      axes[1].bar(x, values, width=0.1, label=f"{arm} {layer}")
  axes[0].set_xlabel("token surprisal under the model (nats)")
  axes[0].set_ylabel("mean key mass m_j")
  axes[0].set_title("context tagging: mass against surprisal")
  axes[0].legend(fontsize=7)
  axes[0].grid(alpha=0.3)
  heads = len(next(iter(results["arms"][arms[0]]["head_mass"].values())))
  axes[1].set_xticks([h + 0.25 for h in range(heads)], [str(h) for h in range(heads)])
  axes[1].set_xlabel("query head")
  axes[1].set_ylabel("gravity mass M_h")
  axes[1].set_title("per-head gravity mass")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  png = os.path.splitext(out_json)[0] + ".png"
  fig.savefig(png, dpi=120)
  plt.close(fig)
  text = ["## What context tagging learned\n",
          "Written by `python bench/tagging_masses.py --report_only` from "
          "`bench/results/tagging_masses.json`: on validation windows, each token's key mass "
          "against its surprisal under the same model (Spearman ρ), for the learned tagging "
          "(`full`) and the tagging from surprisal (`full_surprisal_tags`), per layer. ρ > 0: "
          "the mass follows information content, as the paper's tagging intends.\n",
          "| arm | layer | ρ(mass, surprisal) | mass mean ± std | mass at s < 0.25 nats | "
          "mass at s > 6 nats |", "|---|---|---|---|---|---|"]
  for arm in arms:
    for layer, row in results["arms"][arm]["layers"].items():
      low, high = row["bins"][0]["mean_mass"], row["bins"][-1]["mean_mass"]
      text.append(f"| {arm} | {layer} | {row['rank_correlation']:+.3f} | "
                  f"{row['mass_mean']:.3f} ± {row['mass_std']:.3f} | "
                  f"{low if low is None else format(low, '.3f')} | "
                  f"{high if high is None else format(high, '.3f')} |")
  text.append("\n![tagging masses](../bench/results/tagging_masses.png)")
  cli_runs.publish("tagging", text, png)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = cli_runs.load_json(FLAGS.out)
  results.pop("runs", None)
  if not FLAGS.report_only:
    from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
    for arm, source in (("full", FLAGS.full), ("full_surprisal_tags", FLAGS.surprisal)):
      folder = os.path.join(EXPORT_DIR, arm)
      if source:
        trained.export(trained.load(source), folder)
        results.setdefault("sources", {})[arm] = source
      results.setdefault("arms", {})[arm] = measure(folder, FLAGS.max_windows)
      cli_runs.save_json(FLAGS.out, results)
  report(results, FLAGS.out)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  flags.DEFINE_string("full", "", "Workdir of a trained `full` arm (else the exported one).")
  flags.DEFINE_string("surprisal", "", "Workdir of a trained `full_surprisal_tags` arm.")
  flags.DEFINE_integer("max_windows", 512, "Validation windows to read.")
  flags.DEFINE_string("out", os.path.join(REPO, "bench", "results", "tagging_masses.json"),
                      "Results file.")
  flags.DEFINE_bool("report_only", False, "Write the plot only.")


if __name__ == "__main__":
  define_flags()
  app.run(main)

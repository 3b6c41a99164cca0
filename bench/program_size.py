r"""Where the train step's program grows: traced operations per model part, per preset.

    python bench/program_size.py                    # default, ban, transformer
    python bench/program_size.py --presets=smoke --out=/tmp/size.json

Compile time grows with the program XLA is handed (not in proportion). This traces the plain train step each
preset runs (`ban_jax.training.aot.build`, no compile, a few seconds each) and counts the
primitive operations of its jaxpr, loops and calls entered (a loop body once, as the compiler
sees it), by the module that emitted them: forward and backward of attention, the BAN's
attractor (its diagnostics, influence gate and fixed-point loop apart), the transformer's MLP,
the norms, the loss, and what no module owns (the optimizer update, metrics). Deterministic, unlike
timings: it says where the BAN's program is bigger than the transformer's. Writes bench/results/program_size.json and
a `docs/results.md` section.
"""

import argparse
import collections
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "bench", "results", "program_size.json")
# First match wins: a module path's part -> the row it counts in.
PARTS = (("_sow_diagnostics", "attractor: diagnostics"), ("/attractor/gate", "attractor: gate"),
         ("/attractor/attractor", "attractor: loop"), ("_norm", "norms"),
         ("/attractor", "attractor: rest"), ("/attention", "attention"), ("/attn", "attention"),
         ("/mlp", "mlp"), ("embed", "embedding and logits"), ("LM", "model: rest"),
         ("jvp(", "loss"))
UNOWNED = "optimizer, metrics"


def part_of(name_stack: str) -> str:
  """The row of `PARTS` a jaxpr equation's name stack counts in."""
  for needle, part in PARTS:
    if needle in name_stack:
      return part
  return UNOWNED


def count(jaxpr, prefix: str = "") -> collections.Counter:
  """Primitive equations of `jaxpr` per part, entering every sub-jaxpr (once each)."""
  import jax.extend.core as jcore  # pylint: disable=g-import-not-at-top
  out = collections.Counter()
  for eqn in jaxpr.eqns:
    stack = str(eqn.source_info.name_stack)
    name = f"{prefix}/{stack}" if stack else prefix
    subs = []
    for value in eqn.params.values():
      for v in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(v, jcore.ClosedJaxpr):
          subs.append(v.jaxpr)
        elif isinstance(v, jcore.Jaxpr):
          subs.append(v)
    if subs:
      for sub in subs:
        out += count(sub, name)
    else:
      out[part_of(name)] += 1
  return out


def measure(preset: str) -> dict:
  """{part: equations, "total": all} of `preset`'s plain train step, traced for the host."""
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from ban_jax.training import aot  # pylint: disable=g-import-not-at-top
  from configs import wiki  # pylint: disable=g-import-not-at-top
  config = wiki.get_config(preset)
  config.wells.mode = "off"
  plan, strategy, _ = aot.build(config, jax.devices()[:1])
  fn, n = plan.train_step_jit(strategy)
  batch = aot.abstract_batch(config.train.batch_size, config.data.seq_len, plan.batch_sharding)
  parts = count(fn.trace(plan.abstract, *[batch] * n).jaxpr.jaxpr)
  return dict(parts, total=sum(parts.values()))


def report(res: dict) -> list[str]:
  presets = list(res["presets"])
  parts = sorted({p for r in res["presets"].values() for p in r if p != "total"},
                 key=lambda p: -max(r.get(p, 0) for r in res["presets"].values()))
  lines = ["## Program size: what the train step hands the compiler\n",
           "Written by `python bench/program_size.py` into `bench/results/program_size.json`. "
           "Primitive operations of the plain train step's jaxpr (forward, backward, optimizer; "
           "a loop body counted once), by the module that emitted them: what a cut of the "
           "compile time (`Time to first step`) would have to remove. Size is a guide, not a "
           "law: XLA's time also depends on what the operations are.\n",
           "| part | " + " | ".join(presets) + " |", "|---|" + "---|" * len(presets)]
  for part in parts + ["total"]:
    cells = [f"{res['presets'][p].get(part, 0):,}" for p in presets]
    bold = (lambda c: f"**{c}**") if part == "total" else (lambda c: c)
    lines.append(f"| {bold(part)} | " + " | ".join(bold(c) for c in cells) + " |")
  if "transformer" in res["presets"]:
    base = res["presets"]["transformer"]["total"]
    lines.append("\nOver the transformer's: " + "; ".join(
        f"{p} {res['presets'][p]['total'] / base:.2f}×" for p in presets
        if p != "transformer") + ".\n")
  return lines


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--presets", default="transformer,ban,default")
  ap.add_argument("--out", default=OUT)
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  res = {"presets": {p: measure(p) for p in args.presets.split(",")}}
  sys.path.insert(0, REPO)
  from bench import cli_runs  # pylint: disable=g-import-not-at-top
  cli_runs.save_json(args.out, res)
  lines = report(res)
  if os.path.abspath(args.out) == OUT:
    cli_runs.publish("program_size", lines, "(no plot)")
  else:
    print("\n".join(lines))


if __name__ == "__main__":
  main()

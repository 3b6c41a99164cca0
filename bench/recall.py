r"""Recall where attention matters: MQAR, induction heads and selective copying (issue 26).

    python bench/recall.py --deadline_s=3600       # the plan, run by run, resumable
    python bench/recall.py --report_only           # table, plot, docs/results.md section
    python bench/recall.py --stage=screen --arms=transformer_dot --steps=200   # a part of it

Small models of configs/wiki.py's presets (2 layers, head_dim 16, heads = width / 16) train on
fresh synthetic sequences (`bench/recall_tasks.py`) at T = 64 (T = 128 for the
length cells) with batches of 64 for 3,000 steps and a masked next-token loss on
the positions that test recall, AdamW with a linear warm-up and cosine decay. Each finished run
reports exact-match accuracy per query on 2,000 fresh sequences of a seed of their own, and a
learning curve (accuracy on 256 sequences at 10 points of training); "solved" means >= 99%.

Arms: the transformer with RoPE and each score (dot, gravity = Gravity-2's M²/(‖q−k‖²+ε),
inverse_square), the BAN with the dot score and RoPE, and the shipped default system (the BAN
with the inverse-square score, context tagging and the power-law field; no Gravity Wells, a
training-time mechanism with no role on infinite synthetic data) with tagging off or from
surprisal.

The plan, in stages (each run appended to bench/results/recall.json when it ends):
  screen  MQAR with 8 pairs at width 64: a 3-rate sweep per arm (the gravity logit is bounded
          by M²/ε, so rates matter), widened past an edge (at most twice) while the best rate
          sits on it unsolved; the best rate is used from then on.
  eviction the transformer (dot), the default system and the default with surprisal masses
          (the default's learned tagging blocks recall; surprisal tags do not) trained on MQAR with 4 pairs at
          T = 64, width 64, then tested with the queries at the end (placement "end",
          ~50 tokens after their keys), decoded token by token through
          `ban_jax.inference.decode.Decoder` with each of the seven cache policies at
          budgets of 1/4, 1/8 and 1/16 of the context; accuracy per policy and budget,
          paired over the same 1,000 sequences. A model that does not solve the
          task with the full cache (>= 99% through the decoder) trains again for 3x the steps.
  matched the dot transformer with its MLP cut to 3 x width (`transformer_dot_matched`), whose
          parameters equal the BAN's within 1% (swept at the screen like any arm), the dot
          transformer and the gravity transformer, each at its screened rate with more seeds
          at the screening cell (MATCHED_SEEDS): is the BAN's gap one of parameters (the
          transformer arms have an MLP of 4 x width, ~16% more), and do the transformers'
          solves hold over seeds (MQAR is learnt in a sudden transition that one draw may or
          may not reach)?
  widths  MQAR with 8, 4 and 12 pairs at widths 32, 64, 128 per main arm, in ascending width
          until one solves: the smallest width that solves each, as Zoology's figure reports.
  length  each positional kind (rope, power_law, alibi, none) in a model that solves the task
          at T = 64: on induction the BAN (dot score; the arms of bench/extrapolation.py),
          on MQAR 8 the default system with tagging off (the BAN with the dot score never
          solved MQAR 8), at width 64, trained at T = 128 (induction) or 64 (MQAR, which
          at 128 was not solved), then tested at every longer T of 128, 256, 512, 1024 on
          1,000 fresh sequences each.
  tasks   induction heads and selective copying at width 64 per main arm.
  tagging the default system with tagging learned (the default), off and from surprisal on
          MQAR 8 at width 64, seeds 0-2 each (seed 0 with tagging off solved it where the
          default reached 26.3%: a verdict that one draw of a transition cannot carry).
  seeds   seeds 1 and 2 for every cell whose accuracy landed between 50% and 99%.
Every arm takes its rate from its own screen, but the tagging variants (and their positional
variants) take the default's, the BAN's positional variants the BAN's (one sweep per model, not per knob); the matched transformer is a
model of its own size and gets its own sweep (at the dot transformer's rate it reached 13.2%).
"""

import functools
import json
import os
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import recall_tasks  # pylint: disable=g-import-not-at-top,wrong-import-position

SEQ_LEN = 64
LONG_TRAIN_LEN = 128                        # the length cells' T
VOCAB = 256
BATCH = 64
HEAD_DIM = 16
LAYERS = 2
STEPS = 3000
EVAL_SEQUENCES = 2000
CURVE_POINTS, CURVE_SEQUENCES = 10, 256
SOLVED = 0.99
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
MAX_EXTENSIONS = 2         # rates added past the grid's edge while the best unsolved sits on it
WIDTHS = (32, 64, 128)
SCREEN = dict(task="mqar", pairs=8, width=64)
WIDTH_PAIRS = (8, 4, 12)                    # 12 pairs fill 3/4 of T = 64 (16 would not fit)
# At T = 64, where MQAR is solved (at T = 128 the dot transformer was not: the superseded
# design in recall.json); 4 pairs are 8 tokens, so budgets of 16/8/4 slots are room to
# spare, exactly enough and not enough. Trained with the queries anywhere after the keys
# (trained with them all at the end, the dot transformer plateaued near 50% after 9,000
# steps: no short-range queries to learn the lookup from) and tested with them at the end,
# ~50 tokens after their keys, where a bounded cache must have kept them.
EVICTION = dict(task="mqar", pairs=4, placement="uniform", eval_placement="end", width=64,
                seq_len=SEQ_LEN)
# The default system never solved this cell (51.5%, 50.4% after 3x the steps): its learned
# tagging blocks recall (the tagging stage). The default with surprisal masses solves MQAR and
# has real masses for gravity to score, so it is the BAN side of the eviction verdict.
EVICTION_ARMS = ("transformer_dot", "default", "default_surprisal_tags")
EVICTION_POLICIES = ("full", "recent", "sinks", "h2o", "tova", "knorm", "gravity")
# Gravity and H2O keep the newest half of the budget by default (the seed's and H2O's own
# split); these variants give the whole budget to the score, as Knorm and TOVA do.
EVICTION_VARIANTS = {"gravity_r0": dict(policy="gravity", recent=0),
                     "h2o_r0": dict(policy="h2o", recent=0)}
GRAVITY_FAMILY = ("gravity", "gravity_r0")  # compared with every policy outside the family
EVICTION_FRACTIONS = (4, 8, 16)             # budgets of SEQ_LEN / 4, / 8, / 16 slots
EVICTION_SEQUENCES = 1000
EVICTION_RETRY = 3                          # x STEPS, for a model the first run left unsolved
# Each task's length arms are a model that solves it at T = 64, with each positional kind:
# induction the BAN (dot score; bench/extrapolation.py's arms), MQAR the default system with
# tagging off (the BAN with the dot score never solved MQAR 8, 30.5% at best: a length test of
# a model that cannot recall at its training length would measure nothing). Induction trains
# at T = 128; MQAR at T = 64, because at 128 the default with tagging off reached 27.0% in
# 3,000 steps (the first MQAR length cell, kept in recall.json), where at 64 it solved 3 of 3.
LENGTH_ARMS = {"mqar": ("default_tagging_off", "default_tagging_off_rope",
                        "default_tagging_off_alibi", "default_tagging_off_none"),
               "induction": ("ban", "ban_power_law", "ban_alibi", "ban_none")}
# `length_test` makes these cells of their own (MQAR's shares the tagging stage's task, width
# and T): the same model, also tested at every length in LONG_LENS above its own.
LENGTH_CELLS = (dict(task="mqar", pairs=8, width=64, seq_len=SEQ_LEN, length_test=True),
                dict(task="induction", width=64, seq_len=LONG_TRAIN_LEN, length_test=True))
LONG_LENS = (128, 256, 512, 1024)
LONG_SEQUENCES = 1000

_TRANSFORMER = dict(preset="transformer", positional="rope", tagging=False)
_DEFAULT = dict(preset="ban", attention="inverse_square", positional="power_law", tagging=True)
ARMS = {
    "transformer_dot": dict(_TRANSFORMER, attention="dot"),
    "transformer_gravity": dict(_TRANSFORMER, attention="gravity"),
    "transformer_inverse_square": dict(_TRANSFORMER, attention="inverse_square"),
    # The control at the BAN's parameters: an MLP of 3 x width holds what the BAN's 3 branches,
    # gate, W and output hold (d² each: 6 d² per layer), so the two differ by biases and scales.
    "transformer_dot_matched": dict(_TRANSFORMER, attention="dot", mlp_ratio=3),
    "ban": dict(preset="ban", attention="dot", positional="rope", tagging=False),
    "default": _DEFAULT,
    "default_tagging_off": dict(_DEFAULT, tagging=False),
    "default_surprisal_tags": dict(_DEFAULT, tagging_source="surprisal"),
    **{f"ban_{kind}": dict(preset="ban", attention="dot", positional=kind, tagging=False)
       for kind in ("power_law", "alibi", "none")},
    **{f"default_tagging_off_{kind}": dict(_DEFAULT, tagging=False, positional=kind)
       for kind in ("rope", "alibi", "none")},
}
# The matched stage's seeds at the screening cell. The dot and gravity transformers get five
# in all: after three the dot transformer had solved 1 of 3 and the gravity one 2 of 2, a
# difference three seeds cannot decide (fixed at five before the further seeds ran).
MATCHED_SEEDS = {"transformer_dot": (1, 2, 3, 4), "transformer_gravity": (1, 2, 3, 4),
                 "transformer_dot_matched": (1, 2)}
RATE_FROM = {"default_tagging_off": "default", "default_surprisal_tags": "default",
             **{f"default_tagging_off_{k}": "default" for k in ("rope", "alibi", "none")},
             "ban_power_law": "ban", "ban_alibi": "ban", "ban_none": "ban"}
TAGGING_ARMS = ("default", "default_tagging_off", "default_surprisal_tags")
TAGGING_SEEDS = (0, 1, 2)
MAIN_ARMS = ("transformer_dot", "transformer_gravity", "transformer_inverse_square", "ban",
             "default")
# The cells the verdicts need first; the widths for 4 and 12 pairs (beyond 8) come after them.
STAGES = ("screen", "eviction", "matched", "tagging", "tasks", "length", "widths", "seeds")


def model_config(arm: str, width: int):
  """configs/wiki.py's preset of `arm` at `width`, as a `config.model` block."""
  from configs import wiki  # pylint: disable=g-import-not-at-top
  spec = ARMS[arm]
  c = wiki.get_config(spec["preset"]).model
  c.update(d_model=width, num_layers=LAYERS, num_heads=max(width // HEAD_DIM, 1),
           num_kv_heads=max(width // HEAD_DIM, 1), head_dim=HEAD_DIM, dtype="float32",
           attention=spec["attention"], positional=spec["positional"], tagging=spec["tagging"],
           dropout_rate=0.0)
  if "tagging_source" in spec:
    c.tagging_source = spec["tagging_source"]
  if spec["preset"] == "transformer":
    c.mlp_dim = spec.get("mlp_ratio", 4) * width
  else:
    c.update(num_branches=3, attractor_steps=4, unroll=True)
  return c


def task_kwargs(cell: dict) -> dict:
  return {"pairs": cell["pairs"], "placement": cell.get("placement", "uniform")} if (
      cell["task"] == "mqar") else {}


def accuracy(apply_fn, params, batch) -> tuple[int, int]:
  """(correct, total) exact-match predictions at the weighted positions of `batch`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  logits = np.asarray(apply_fn(params, batch))
  w = batch["weights"] > 0
  return int(np.sum((logits.argmax(-1) == batch["targets"]) & w)), int(np.sum(w))


def train_one(cell: dict, *, steps: int, log=print) -> dict:
  """Trains `cell` (arm, task, width, lr, seed, task arguments); returns its record.

  `steps` unless the cell names its own `train_steps` (an eviction model's longer retry).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ban_jax import models  # pylint: disable=g-import-not-at-top
  from ban_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top

  start = time.time()
  steps = cell.get("train_steps", steps)
  model = models.get_model(model_config(cell["arm"], cell["width"]), VOCAB)
  data = functools.partial(recall_tasks.generate, cell["task"], batch=BATCH,
                           seq_len=cell.get("seq_len", SEQ_LEN),
                           vocab=VOCAB, **task_kwargs(cell))
  train_rng = np.random.default_rng([cell["seed"], 0])
  batch0 = data(train_rng)
  params = model.init(jax.random.key(cell["seed"]), jnp.asarray(batch0["inputs"]),
                      positions=jnp.asarray(batch0["positions"]), deterministic=True)["params"]
  num_params = sum(x.size for x in jax.tree.leaves(params))
  schedule = optax.warmup_cosine_decay_schedule(0.0, cell["lr"], max(steps // 20, 1), steps,
                                                cell["lr"] / 10)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  opt_state = tx.init(params)

  def loss_fn(p, batch):
    logits, sown = steps_lib.forward(model, p, batch)
    nll = steps_lib.token_nll(logits, batch["targets"])
    aux = sum((jnp.sum(x) for x in jax.tree.leaves(sown.get("losses", {}))), jnp.zeros(()))
    return jnp.sum(nll * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0) + aux

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(p, o, batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  apply_fn = jax.jit(lambda p, batch: steps_lib.forward(model, p, batch)[0])
  curve_rng_seed = [cell["seed"], 1]
  curve, losses = [], []
  every = max(steps // CURVE_POINTS, 1)
  batch = batch0
  for step in range(steps):
    params, opt_state, loss = train_step(params, opt_state, jax.tree.map(jnp.asarray, batch))
    batch = data(train_rng)
    if (step + 1) % every == 0 or step + 1 == steps:
      losses.append(float(loss))
      held = data(np.random.default_rng(curve_rng_seed), batch=CURVE_SEQUENCES)
      right, total = accuracy(apply_fn, params, held)
      curve.append([step + 1, right / total])
      rate = (step + 1) / (time.time() - start)
      log(f"[recall]   step {step + 1}/{steps}: loss {float(loss):.3f}, accuracy "
          f"{right / total:.3f} ({rate:.1f} steps/s, ETA {(steps - step - 1) / rate:.0f} s)")
  eval_rng = np.random.default_rng([cell["seed"], 2])
  right = total = 0
  for _ in range(EVAL_SEQUENCES // 250):
    r, t = accuracy(apply_fn, params, data(eval_rng, batch=250))
    right, total = right + r, total + t
  record = dict(cell, steps=steps, accuracy=right / total, queries=total, curve=curve,
                losses=losses, params=int(num_params))
  if is_length_cell(cell):
    record["lengths"] = {str(cell["seq_len"]): right / total}
    for length in [t for t in LONG_LENS if t > cell["seq_len"]]:
      record["lengths"][str(length)] = long_accuracy(apply_fn, params, cell, length)
      log(f"[recall]   at T = {length}: accuracy {record['lengths'][str(length)]:.4f}")
  if is_eviction_cell(cell):
    record["eviction"] = eviction_accuracy(model, params, cell, log)
  record["wall_s"] = time.time() - start
  return record


def _same(cell: dict, spec: dict) -> bool:
  defaults = {"placement": "uniform", "seq_len": SEQ_LEN, "length_test": False}
  return all(cell.get(k, defaults.get(k)) == v for k, v in spec.items())


def is_length_cell(cell: dict) -> bool:
  return cell["arm"] in LENGTH_ARMS.get(cell["task"], ()) and any(
      _same(cell, dict(c, placement="uniform") if c["task"] == "mqar" else c)
      for c in LENGTH_CELLS)


def is_eviction_cell(cell: dict) -> bool:
  return cell["arm"] in EVICTION_ARMS and _same(cell, EVICTION)


def long_accuracy(apply_fn, params, cell: dict, length: int) -> float:
  """Accuracy per query on LONG_SEQUENCES fresh sequences of `length` tokens."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([cell["seed"], 4, length])
  per_batch = max(1, 250 * LONG_TRAIN_LEN // length)   # the same tokens per batch at each T
  right = total = 0
  for start in range(0, LONG_SEQUENCES, per_batch):
    batch = recall_tasks.generate(cell["task"], rng, min(per_batch, LONG_SEQUENCES - start),
                                  length, VOCAB, **task_kwargs(cell))
    r, t = accuracy(apply_fn, params, batch)
    right, total = right + r, total + t
  return right / total


def eviction_accuracy(model, params, cell: dict, log=print) -> dict:
  """Exact-match recall decoded token by token under each policy and budget.

  Every policy sees the same EVICTION_SEQUENCES sequences; the paired difference of each
  policy from "gravity" is over per-sequence accuracies (mean and its standard error).

  Returns:
    {"budgets": [...], "accuracy": {policy: {budget: acc}}, "vs": {g: {policy: {budget:
    [mean difference (policy − g), standard error]}}} for g in GRAVITY_FAMILY, "vs_gravity":
    vs["gravity"], "full": the unbounded cache's accuracy through the decoder (equal to the
    parallel forward's up to ties).} Policies are EVICTION_POLICIES and EVICTION_VARIANTS.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import decode  # pylint: disable=g-import-not-at-top
  from ban_jax.ops import kv_cache  # pylint: disable=g-import-not-at-top
  test = dict(cell, placement=cell.get("eval_placement", cell.get("placement", "uniform")))
  batch = recall_tasks.generate(cell["task"], np.random.default_rng([cell["seed"], 3]),
                                EVICTION_SEQUENCES, cell["seq_len"], VOCAB,
                                **task_kwargs(test))
  tokens = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
  asked = batch["weights"] > 0

  def per_sequence(spec):
    dec = decode.Decoder(model, spec)
    guess = np.concatenate([np.asarray(dec.predict(params, tokens[i:i + 250]))
                            for i in range(0, len(tokens), 250)])
    return ((guess == batch["targets"]) & asked).sum(1) / asked.sum(1)

  full = per_sequence(kv_cache.KVSpec("full", slots=cell["seq_len"] + 1))
  budgets = [cell["seq_len"] // f for f in EVICTION_FRACTIONS]
  named = {p: dict(policy=p) for p in EVICTION_POLICIES[1:]} | EVICTION_VARIANTS
  scores = {}
  for name, kw in named.items():
    for slots in budgets:
      # StreamingLLM's 4 sinks would fill a 4-slot budget: at most a quarter of it.
      spec = kv_cache.KVSpec(slots=slots, sinks=max(1, min(4, slots // 4)), **kw)
      scores[(name, slots)] = per_sequence(spec)
      log(f"[recall]   eviction {name} at {slots} slots: "
          f"{scores[(name, slots)].mean():.4f} (full cache {full.mean():.4f})")
  out = {"budgets": budgets, "full": float(full.mean()), "accuracy": {}, "vs": {}}
  for (name, slots), acc in scores.items():
    out["accuracy"].setdefault(name, {})[str(slots)] = float(acc.mean())
    for ref in GRAVITY_FAMILY:
      diff = acc - scores[(ref, slots)]
      out["vs"].setdefault(ref, {}).setdefault(name, {})[str(slots)] = [
          float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))]
  out["vs_gravity"] = out["vs"]["gravity"]
  return out


def key_of(cell: dict) -> tuple:
  return (cell["arm"], cell["task"], cell.get("pairs"), cell.get("placement", "uniform"),
          cell["width"], cell["lr"], cell["seed"], cell.get("train_steps"),
          cell.get("seq_len", SEQ_LEN), cell.get("eval_placement"),
          bool(cell.get("length_test")))


def _sweep(runs, arm) -> dict[float, float]:
  """{rate: accuracy} of `arm`'s screening runs (seed 0)."""
  # The screening cell only: an eviction or length cell shares its task, pairs and width.
  screen = dict(SCREEN, placement="uniform", seq_len=SEQ_LEN)
  return {r["lr"]: r["accuracy"] for r in runs if r["arm"] == arm and r["seed"] == 0
          and _same(r, screen)}


def rate_grid(runs, arm) -> list[float]:
  """The rates `arm`'s screen needs: LEARNING_RATES, widened past an edge (at most twice, by
  the grid's own factor) while the best unsolved rate sits on it (the results' protocol)."""
  arm = RATE_FROM.get(arm, arm)
  grid, sweep = list(LEARNING_RATES), _sweep(runs, arm)
  step = LEARNING_RATES[1] / LEARNING_RATES[0]
  for _ in range(MAX_EXTENSIONS):
    if any(lr not in sweep for lr in grid):
      break
    best = _pick(grid, sweep)
    if sweep[best] >= SOLVED or best not in (grid[0], grid[-1]):
      break
    edge = grid[0] / step if best == grid[0] else grid[-1] * step
    edge = float(f"{edge:.0e}")              # 3.3e-4 -> 3e-4: rates people type
    grid = [edge] + grid if best == grid[0] else grid + [edge]
  return grid


def _pick(grid, sweep) -> float:
  # Ties (e.g. several rates at 100%) go to the middle of the grid, then the lower rate.
  middle = (len(grid) - 1) / 2
  return max(grid, key=lambda lr: (round(sweep[lr], 3), -abs(grid.index(lr) - middle), -lr))


def best_lr(runs, arm) -> float | None:
  """The screening cell's best rate for `arm` (seed 0), or None before its sweep is done.

  Arms in RATE_FROM take the rate of the arm they vary.
  """
  arm = RATE_FROM.get(arm, arm)
  grid, sweep = rate_grid(runs, arm), _sweep(runs, arm)
  if any(lr not in sweep for lr in grid):
    return None
  return _pick(grid, sweep)


def plan(runs, arms, stages) -> list[dict]:
  """The cells still to train, stage by stage in STAGES' order (later stages need the rates)."""
  by_stage = {stage: [] for stage in STAGES}
  by_stage["screen"] = [dict(SCREEN, arm=arm, lr=lr, seed=0) for arm in arms
                        if arm not in RATE_FROM for lr in rate_grid(runs, arm)]
  rates = {arm: best_lr(runs, arm) for arm in arms}
  main = [a for a in arms if a in MAIN_ARMS and rates[a] is not None]
  for arm in EVICTION_ARMS:
    if arm in arms and rates[arm] is not None:
      cell = dict(EVICTION, arm=arm, lr=rates[arm], seed=0)
      first = [r for r in runs if key_of(r) == key_of(cell)]
      # "Trained until it solves with the full cache": once more, longer, if it did not.
      if first and first[0]["eviction"]["full"] < SOLVED:
        cell["train_steps"] = EVICTION_RETRY * STEPS
      by_stage["eviction"].append(cell)
  # Seeds of both sides of the equal-parameter comparison and of the gravity transformer
  # (which solved the screen at two rates where the dot transformer solved it at one), each at
  # its own screened rate: a solve in one draw of a phase transition is not yet a result.
  by_stage["matched"] = [dict(SCREEN, arm=arm, lr=rates[arm], seed=seed)
                         for arm, seeds in MATCHED_SEEDS.items()
                         if arm in arms and rates[arm] is not None for seed in seeds]
  for pairs in WIDTH_PAIRS:
    for arm in main:
      # Ascending widths until one solves: the smallest solving width is the result.
      for width in WIDTHS:
        cell = dict(task="mqar", pairs=pairs, width=width, arm=arm, lr=rates[arm], seed=0)
        by_stage["widths"].append(cell)
        done = [r for r in runs if key_of(r) == key_of(cell)]
        if not done or done[0]["accuracy"] >= SOLVED:
          break
  by_stage["length"] = [dict(c, arm=arm, lr=rates[arm], seed=0) for c in LENGTH_CELLS
                        for arm in LENGTH_ARMS[c["task"]]
                        if arm in arms and rates[arm] is not None]
  by_stage["tasks"] = [dict(task=task, width=64, arm=arm, lr=rates[arm], seed=0)
                       for task in ("induction", "copying") for arm in main]
  # Seed 0 of each variant first, then every seed of all three (the default included).
  by_stage["tagging"] = [dict(SCREEN, arm=arm, lr=rates["default"], seed=seed)
                         for seed in TAGGING_SEEDS for arm in TAGGING_ARMS
                         if arm in arms and rates.get("default") is not None]
  # Not the eviction cells: their verdicts pair one trained model's policies over the same
  # sequences, and a retrained model would be another model, not another sample of it.
  middling = [r for r in runs if r["seed"] == 0 and 0.5 <= r["accuracy"] < SOLVED
              and r["lr"] == rates.get(r["arm"]) and r["arm"] in arms
              and not r.get("eval_placement")]
  keep = ("task", "width", "arm", "lr", "pairs", "placement", "seq_len", "train_steps")
  by_stage["seeds"] = [dict({k: r[k] for k in keep if k in r}, seed=seed)
                       for r in middling for seed in (1, 2)]
  cells = [c for stage in STAGES if stage in stages for c in by_stage[stage]]
  done = {key_of(r) for r in runs}
  out, seen = [], set()
  for c in cells:
    if key_of(c) not in done and key_of(c) not in seen:
      seen.add(key_of(c))
      out.append(c)
  return out


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = cli_runs.load_json(FLAGS.out)
  if FLAGS.report_only:
    from bench import recall_report  # pylint: disable=g-import-not-at-top
    recall_report.report(results, FLAGS.out)
    return
  arms = FLAGS.arms or list(ARMS)
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise app.UsageError(f"--arms: unknown {unknown}; the arms are {list(ARMS)}.")
  stages = FLAGS.stage or list(STAGES)
  deadline = time.time() + FLAGS.deadline_s if FLAGS.deadline_s else None
  started = time.time()
  while True:
    todo = plan(results["runs"], arms, stages)
    if not todo:
      print("[recall] nothing left to train in these stages", flush=True)
      break
    cell = todo[0]
    walls = [r["wall_s"] * cell.get("train_steps", FLAGS.steps) / r["steps"]
             for r in results["runs"]
             if r["width"] == cell["width"] and r["arm"] == cell["arm"]]
    if deadline is not None and walls and time.time() + min(walls) > deadline:
      print("[recall] deadline: no time for another run; rerun to continue", flush=True)
      break
    print(f"[recall] {len(todo)} cells left; {json.dumps(cell)}", flush=True)
    record = train_one(cell, steps=FLAGS.steps, log=lambda s: print(s, flush=True))
    results["runs"].append(record)
    results["wall_s"] = results.get("wall_s", 0.0) + record["wall_s"]
    results["run_count"] = len(results["runs"])
    cli_runs.save_json(FLAGS.out, results)
    print(f"[recall]   accuracy {record['accuracy']:.4f} on {record['queries']} queries, "
          f"{record['wall_s']:.0f} s ({time.time() - started:.0f} s this session)", flush=True)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  cli_runs.define_study_flags("recall", seeds=False)
  flags.DEFINE_list("arms", [], f"Only these arms (default: all of {list(ARMS)}).")
  flags.DEFINE_multi_enum("stage", [], STAGES, "Only these stages (default: all, in order).")
  flags.DEFINE_integer("steps", STEPS, "Training steps per run.")


if __name__ == "__main__":
  define_flags()
  app.run(main)

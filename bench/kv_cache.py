r"""The inference level: which tokens to keep in a bounded KV cache, measured on trained models.

    python bench/kv_cache.py                       # everything missing from the results file
    python bench/kv_cache.py --report_only         # plot and docs/results.md section

Models: the ablation's `full` arm (the paper's system: BAN, Gravity-2 attention, context
tagging, power-law field, trained with wells) and its `transformer` arm (dot product, RoPE), CPU
scale, trained at T=128 with the ablation's best learning rate. Their parameters live in
bench/results/kv_cache/<model>/ (`ban_jax.inference.trained.export`); a missing one is trained
first through the CLI (a few minutes each).

1. Bits/byte of the held-out text (../shared/data/wikitext2_valid.txt, never copied) on
   --streams streams of --stream_len tokens, decoded as one batch, teacher-forced one token at a
   time through the cache (`ban_jax.inference.decode.Decoder.score`), for every policy x budget
   {32, 64, 128, 256} and the full cache; at budget 64 also gravity with one term at a time.
2. Recall: a passage, a gap of other text, the same passage again. The second reading's
   bits/byte under a policy, against the same under `recent` at that budget (which has dropped
   the passage for sure), says how much keeping the right tokens saved.
3. Speed: decoding one token with the cache (full policy, as many slots as the context) against
   recomputing the whole window, at contexts 512 and 2048, batch 1; and cache memory.
"""

import math
import os
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import ablation  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import ablation_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = ("full", "transformer")
BOUNDED = ("recent", "sinks", "h2o", "tova", "knorm", "gravity")
BUDGETS = (32, 64, 128, 256)
TERM_BUDGET = 64
CONTEXTS = (512, 2048)
# The passage comes back 96 tokens after it started: inside the models' training window (128),
# where they can copy at all, but out of reach of a 32- or 64-slot cache that keeps only the
# newest tokens.
RECALL = dict(lead=16, passage=32, gap=64)
RECALL_BUDGETS = (32, 64)
MODEL_DIR = os.path.join(REPO, "bench", "results", "kv_cache")


def _heldout_bytes() -> bytes:
  from configs import wiki  # pylint: disable=g-import-not-at-top
  path = wiki.heldout_default()
  if not path:
    raise app.UsageError("the held-out text is missing: set $BAN_JAX_HELDOUT_DIR to the folder "
                         "holding wikitext2_valid.txt (../shared/data beside the checkout).")
  with open(path, "rb") as f:
    return f.read()


def ensure_model(name: str, results: dict) -> str:
  """The exported folder of `name`, training and exporting it first if it is missing."""
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  folder = os.path.join(MODEL_DIR, name)
  if os.path.exists(os.path.join(folder, trained.EXPORTED_PARAMS)):
    return folder
  summary = ablation_report.summarize(cli_runs.load_json(FLAGS.ablation), "cpu")
  if name not in summary:
    raise app.UsageError(f"{FLAGS.ablation} has no finished `{name}` arm to take the learning "
                         "rate and steps from; run bench/ablation.py first.")
  lr, steps = summary[name]["lr"], summary[name]["steps"]
  workdir = os.path.join(FLAGS.workdir, name)
  print(f"[kv_cache] training {name}: lr {lr:g}, {steps} steps", flush=True)
  status = cli_runs.run_cli(ablation.ARMS[name]["model"], workdir, ablation.overrides(
      name, cli_runs.SCALES["cpu"], steps=steps, lr=lr, seed=0), None)
  if status != "done":
    raise RuntimeError(f"training {name} {status}")
  trained.export(trained.load(workdir), folder)
  results.setdefault("models", {})[name] = {"lr": lr, "steps": steps, "seed": 0,
                                            "arm": name}
  return folder


def streams(data: bytes, tokenizer, count: int, length: int):
  """`count` rows of [BOS] + `length` − 1 bytes, from consecutive stretches of the text."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  ids = tokenizer.encode(data)
  rows, n = [], length - 1
  for i in range(count):
    chunk = ids[i * n:(i + 1) * n]
    if len(chunk) < n:
      raise app.UsageError(f"the held-out text has room for {i} streams of {length} tokens, "
                           f"not {count}; lower --streams or --stream_len.")
    rows.append(np.concatenate([[tokenizer.bos_id], chunk]))
  return np.stack(rows).astype(np.int32)


def recall_streams(data: bytes, tokenizer, count: int):
  """Rows [BOS] lead passage gap passage, and the slices of both readings of the passage."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  ids = tokenizer.encode(data)
  lead, passage, gap = RECALL["lead"], RECALL["passage"], RECALL["gap"]
  span = lead + passage + gap
  rows = []
  for i in range(count):
    base = 100_000 + i * 2 * span            # away from the bits/byte streams
    text = ids[base:base + span]
    rows.append(np.concatenate([[tokenizer.bos_id], text, text[lead:lead + passage]]))
  first = slice(1 + lead, 1 + lead + passage)
  second = slice(1 + span, 1 + span + passage)
  return np.stack(rows).astype(np.int32), first, second


def _bits_per_byte(nll, tokens, token_bytes, cols=slice(None)):
  """Sum of nats over the scored tokens / their bytes, in bits (nll[:, t] scores tokens[:, t+1])."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  nll = np.asarray(nll)
  targets = tokens[:, 1:]
  start = 0 if cols.start is None else cols.start - 1
  stop = nll.shape[1] if cols.stop is None else cols.stop - 1
  nbytes = token_bytes[targets[:, start:stop]].sum()
  return float(nll[:, start:stop].sum() / math.log(2) / max(nbytes, 1))


def _specs(model_name: str):
  """(policy, budget, terms) rows of the bits/byte table for one model."""
  from ban_jax.ops import kv_cache as kv  # pylint: disable=g-import-not-at-top
  rows = [("full", 0, kv.GRAVITY_TERMS)]
  rows += [(p, b, kv.GRAVITY_TERMS) for p in BOUNDED for b in BUDGETS]
  singles = [("surprisal",), ("attention",)] + ([("tag",)] if model_name == "full" else [])
  rows += [("gravity", TERM_BUDGET, t) for t in singles]
  return rows


def cache_bytes(cache) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)))


def measure_speed(run, context: int, repeats: int) -> dict:
  """Seconds per generated token: cached step (full cache of `context` slots) vs recompute."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import decode  # pylint: disable=g-import-not-at-top
  from ban_jax.ops import kv_cache as kv  # pylint: disable=g-import-not-at-top
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 200, (1, context)), jnp.int32)
  recompute = jax.jit(lambda p, t: run.model.apply({"params": p}, t)[:, -1])
  recompute(run.params, tokens).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    recompute(run.params, tokens).block_until_ready()
    times.append(time.perf_counter() - start)
  full_s = sorted(times)[len(times) // 2]
  dec = decode.Decoder(run.model, kv.KVSpec("full", slots=context))
  _, cache = dec.prefill(run.params, tokens[:, :context - 2 * repeats - 2])
  position = context - 2 * repeats - 2
  times = []
  for i in range(2 * repeats):
    start = time.perf_counter()
    logits, cache = dec.step(run.params, cache, tokens[:, position:position + 1],
                             jnp.full((1, 1), position))
    logits.block_until_ready()
    if i:                                                   # the first call compiles
      times.append(time.perf_counter() - start)
    position += 1
  cached_s = sorted(times)[len(times) // 2]
  return {"context": context, "recompute_s_per_token": full_s, "cached_s_per_token": cached_s,
          "speedup": full_s / cached_s, "cache_bytes": cache_bytes(cache)}


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = cli_runs.load_json(FLAGS.out)
  results.pop("runs", None)
  if FLAGS.report_only:
    report(results, FLAGS.out)
    return
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import decode  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from ban_jax.ops import kv_cache as kv  # pylint: disable=g-import-not-at-top
  data = _heldout_bytes()
  results["meta"] = {"streams": FLAGS.streams, "stream_len": FLAGS.stream_len,
                     "recall": RECALL, "backend": jax.default_backend()}
  for name in MODELS:
    run = trained.load(ensure_model(name, results))
    token_bytes = np.asarray(run.tokenizer.token_bytes)
    rows = streams(data, run.tokenizer, FLAGS.streams, FLAGS.stream_len)
    recall_rows, first, second = recall_streams(data, run.tokenizer, FLAGS.streams)
    results.setdefault("models", {}).setdefault(name, {})["params"] = int(
        sum(x.size for x in jax.tree.leaves(run.params)))
    table = results.setdefault("bpb", [])
    for policy, budget, terms in _specs(name):
      key = dict(model=name, policy=policy, budget=budget, terms=list(terms))
      if any({k: r[k] for k in key} == key for r in table):
        continue
      slots = budget or FLAGS.stream_len
      spec = kv.KVSpec(policy, slots=slots, terms=tuple(terms))
      start = time.perf_counter()
      dec = decode.Decoder(run.model, spec)
      nll = dec.score(run.params, rows)
      bpb = _bits_per_byte(nll, rows, token_bytes)
      per_stream = [_bits_per_byte(nll[i:i + 1], rows[i:i + 1], token_bytes)
                    for i in range(rows.shape[0])]
      recall = {}
      if policy == "full" or budget in RECALL_BUDGETS and tuple(terms) == kv.GRAVITY_TERMS:
        rnll = decode.Decoder(run.model, kv.KVSpec(policy, slots=budget or recall_rows.shape[1],
                                                   terms=tuple(terms))).score(run.params,
                                                                              recall_rows)
        recall = {"first_bpb": _bits_per_byte(rnll, recall_rows, token_bytes, first),
                  "second_bpb": _bits_per_byte(rnll, recall_rows, token_bytes, second)}
      seconds = time.perf_counter() - start
      table.append(dict(key, bpb=bpb, bpb_streams=per_stream, seconds=seconds, **recall))
      cli_runs.save_json(FLAGS.out, results)
      print(f"[kv_cache] {name} {policy} budget {budget or 'full'} {'+'.join(terms)}: "
            f"{bpb:.4f} bits/byte" + (f", recall {recall['first_bpb']:.3f} -> "
                                      f"{recall['second_bpb']:.3f}" if recall else "")
            + f" ({seconds:.0f} s)", flush=True)
    speed = results.setdefault("speed", [])
    for context in CONTEXTS:
      if any(r["model"] == name and r["context"] == context for r in speed):
        continue
      row = dict(measure_speed(run, context, FLAGS.repeats), model=name)
      speed.append(row)
      cli_runs.save_json(FLAGS.out, results)
      print(f"[kv_cache] {name} context {context}: cached {row['cached_s_per_token'] * 1e3:.2f}"
            f" ms/token, recompute {row['recompute_s_per_token'] * 1e3:.2f} ms/token: "
            f"{row['speedup']:.1f}x; cache {row['cache_bytes'] / 2**20:.2f} MiB", flush=True)
  report(results, FLAGS.out)


def report(results: dict, out_json: str):
  from bench import kv_cache_report  # pylint: disable=g-import-not-at-top
  kv_cache_report.report(results, out_json)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  flags.DEFINE_string("out", os.path.join(REPO, "bench", "results", "kv_cache.json"),
                      "Results file (JSON, rewritten after every measurement).")
  flags.DEFINE_string("ablation", os.path.join(REPO, "bench", "results", "ablation.json"),
                      "The ablation's results: learning rate and steps of a model to train.")
  flags.DEFINE_string("workdir", "/tmp/ban_kv_cache", "Where missing models train.")
  flags.DEFINE_integer("streams", 8, "Held-out streams decoded as one batch.")
  flags.DEFINE_integer("stream_len", 4096, "Tokens per stream.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per speed measurement (median).")
  flags.DEFINE_bool("report_only", False, "Write the plot and the results section only.")


if __name__ == "__main__":
  define_flags()
  app.run(main)

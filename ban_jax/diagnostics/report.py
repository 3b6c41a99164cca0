"""Runs every check on a trained run and writes report.json, report.md and the figures.

`diagnose(workdir, out, ...)` is `python -m ban_jax.diagnose`; the folder is written whole
through a temporary one, so a failure leaves no half-written report.
"""

import dataclasses
import json
import os
import shutil
import sys
import time

import flax
import jax
import numpy as np

from ban_jax.data import pipeline
from ban_jax.data import sources
from ban_jax.diagnostics import checks
from ban_jax.diagnostics import cloze
from ban_jax.diagnostics import mass
from ban_jax.diagnostics import plots
from ban_jax.diagnostics import readout
from ban_jax.diagnostics import report_md
from ban_jax.errors import UserError
from ban_jax.inference import trained


@dataclasses.dataclass(frozen=True)
class Settings:
  """How much of each check to run (the defaults are the committed reports' sizes)."""
  query_bytes: int = 96          # every query (and cloze prefix) is this many bytes
  pool: int = 200                # check 1's queries (20 of them drawn for the figures)
  cloze_items: int = 400
  sweep_prompts: int = 16
  sweep_length: int = 256
  field_windows: int = 16
  curvature_iterations: int = 20
  seed: int = 0


class Progress:
  """One line per stage on stderr: [stage/total] name, elapsed, a rough ETA."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.time()

  def __call__(self, name: str):
    elapsed = time.time() - self.start
    eta = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
    bar = "#" * self.done + "-" * (self.total - self.done)
    print(f"diagnose [{bar}] {self.done + 1}/{self.total} {name} ({elapsed:.0f} s{eta})",
          file=sys.stderr, flush=True)
    self.done += 1


def _checkpoint_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _train_distribution(run) -> np.ndarray:
  splits, _ = sources.open_splits(run.config.data)
  counts = np.zeros(run.tokenizer.vocab_size, np.int64)
  for i in range(len(splits["train"])):
    text = pipeline.example_text(splits["train"][i], run.config.data.text_key)
    counts += np.bincount(run.tokenizer.encode(text), minlength=counts.size)
  counts[run.tokenizer.bos_id] += len(splits["train"])
  counts[run.tokenizer.eos_id] += len(splits["train"])
  return mass.unigram_distribution(counts)


def _validation_texts(run) -> list[str]:
  splits, _ = sources.open_splits(run.config.data)
  v = splits["validation"]
  texts = (pipeline.example_text(v[i], run.config.data.text_key) for i in range(len(v)))
  return [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]


HELDOUT_FILE = "wikitext2_valid.txt"


def default_queries() -> str | None:
  """The held-out text, from $BAN_JAX_HELDOUT_DIR or ../shared/data beside the checkout."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for folder in (os.environ.get("BAN_JAX_HELDOUT_DIR"),
                 os.path.join(os.path.dirname(repo), "shared", "data")):
    if folder and os.path.isfile(os.path.join(folder, HELDOUT_FILE)):
      return os.path.join(folder, HELDOUT_FILE)
  return None


def _read_queries(source, tokenizer, count: int, length: int, seed: int) -> np.ndarray:
  """`count` windows of `length` tokens from random places in `source`: the path of a text
  file, or a list of texts (joined by newlines)."""
  if isinstance(source, str):
    try:
      with open(source, encoding="utf-8") as f:
        tokens = tokenizer.encode(f.read())
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f"--queries={source} cannot be read as UTF-8 text ({e}).") from e
  else:
    tokens = tokenizer.encode("\n".join(source))
  if len(tokens) < 4 * length:
    raise UserError(f"the query text holds {len(tokens)} tokens; it needs at least "
                    f"{4 * length} to draw queries of {length}.")
  starts = np.random.default_rng(seed).integers(0, len(tokens) - length, count)
  return np.stack([tokens[s:s + length] for s in starts]).astype(np.int32)


def _learned_power(params):
  """The power-law field's exponents softplus(power) per layer, [layers, heads], or None."""
  flat = flax.traverse_util.flatten_dict(params)
  found = sorted(((k, v) for k, v in flat.items() if k[-2:] == ("power_law", "power")),
                 key=lambda kv: readout.layer_order(kv[0]))
  if not found:
    return None
  return np.stack([np.asarray(jax.nn.softplus(v)) for _, v in found])


def _output_embeddings(params):
  """The rows that make the logits, [vocab, width]: the tied embedding table, or the untied
  output layer's kernel transposed."""
  if "logits" in params and "kernel" in params["logits"]:
    return np.asarray(params["logits"]["kernel"]).T
  return np.asarray(params["embed"]["embedding"])


def _strip_plots(tree):
  if isinstance(tree, dict):
    return {k: _strip_plots(v) for k, v in tree.items() if k != "plot"}
  return tree


def _field(run, windows, settings):
  weights = readout.attention_weights(run.model, run.params, windows)
  return checks.field_check(weights, learned_power=_learned_power(run.params),
                            seed=settings.seed)


def diagnose(workdir: str, out: str, queries_path: str | None,
             settings: Settings = Settings()):
  """Every check on the newest checkpoint of `workdir`; writes `out/` (replacing it).

  Queries are drawn from the text file `queries_path`, or from the run's validation split when
  it is None (the cloze items come from the validation split either way).
  """
  run = trained.load(workdir)
  if run.tokenizer.name != "bytes":
    raise UserError(f"{workdir} uses the {run.tokenizer.name!r} tokenizer; the diagnostics "
                    "read queries and cloze answers as bytes (data.tokenizer=bytes).")
  steps = _checkpoint_steps(workdir)
  progress = Progress(7 + max(len(steps) - 1, 0))
  s = settings
  progress("training statistics and queries")
  train_distribution = _train_distribution(run)
  validation = _validation_texts(run)
  source = queries_path or validation
  queries = _read_queries(source, run.tokenizer, s.pool, s.query_bytes, s.seed)
  report = {"workdir": os.path.abspath(workdir), "step": run.step,
            "model": run.config.model.to_dict(), "settings": dataclasses.asdict(s),
            "queries": os.path.abspath(queries_path) if queries_path else "the validation split"}
  progress("check 1: potential landscapes")
  measures = readout.query_measures(run.model, run.params, queries, train_distribution)
  report["check1"] = checks.landscape_check(
      measures, _output_embeddings(run.params), seed=s.seed)
  progress("check 2: factual cloze (generation at T = 0.5 and 1.0, curvature)")
  items = cloze.find_items(validation, s.query_bytes, limit=s.cloze_items,
                           seed=s.seed)
  if len(items) < min(20, s.cloze_items):
    raise UserError(f"the validation split gave {len(items)} cloze items; the check needs "
                    f"{min(20, s.cloze_items)} or more (a longer validation split).")
  report["check2"] = checks.cloze_check(run.model, run.params, run.tokenizer, items,
                                        train_distribution, iterations=s.curvature_iterations,
                                        seed=s.seed)
  progress("check 3: temperature sweep")
  report["check3"] = checks.temperature_check(
      run.model, run.params, queries[:s.sweep_prompts],
      newline=int(run.tokenizer.encode("\n")[0]), vocab_size=run.tokenizer.vocab_size,
      length=s.sweep_length, seed=s.seed)
  progress("the attention field")
  length = int(run.config.data.seq_len)
  windows = _read_queries(source, run.tokenizer, s.field_windows, length, s.seed + 1)
  report["field"] = _field(run, windows, s)
  training = []
  for step in steps[:-1]:
    progress(f"the attention field at step {step}")
    earlier = trained.load(workdir, step=step)
    training.append((step, _field(earlier, windows, s)))
  if training:
    training.append((run.step, report["field"]))
    report["field_over_training"] = [
        {"step": st, "mean_p_per_layer": [l["summary"]["mean_p"] for l in f["layers"]]}
        for st, f in training]
  progress("figures and report")
  _write(out, report, run)
  progress("done")
  return _strip_plots(report)


def _write(out: str, report: dict, run):
  tmp = out.rstrip("/") + f".tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    decode = lambda ids: run.tokenizer.decode(ids)
    plots.landscapes(report["check1"], "pca", os.path.join(tmp, "check1_landscape_pca.png"),
                     decode)
    plots.landscapes(report["check1"], "mds", os.path.join(tmp, "check1_landscape_mds.png"),
                     decode)
    plots.mass_scatter(report["check1"], os.path.join(tmp, "check1_wells_vs_mass.png"))
    plots.cloze_errors(report["check2"], os.path.join(tmp, "check2_errors_vs_mass.png"))
    plots.temperature(report["check3"], os.path.join(tmp, "check3_temperature.png"))
    plots.attention_field(report["field"], os.path.join(tmp, "field.png"),
                          f"{run.config.model.positional} positions, step {run.step}")
    if "field_over_training" in report:
      rows = report["field_over_training"]
      plots.exponent_over_training([r["step"] for r in rows],
                                   [r["mean_p_per_layer"] for r in rows],
                                   os.path.join(tmp, "field_over_training.png"))
    clean = _strip_plots(report)
    with open(os.path.join(tmp, "report.json"), "w") as f:
      json.dump(clean, f, indent=1, default=float)
    with open(os.path.join(tmp, "report.md"), "w") as f:
      f.write(report_md.render(clean))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(out):
    shutil.rmtree(out)
  os.replace(tmp, out)

"""Metrics to TensorBoard event files and to `metrics.jsonl`, and progress lines.

clu's metric writers would be the first choice, but importing `clu.metric_writers` (and
`clu.periodic_actions`) imports TensorFlow, which this project does not install; tensorboardX
writes the same event files without it.
"""

import json
import os
import time

from absl import logging
import jax
import numpy as np

from ban_jax.training import disk


class MetricWriter:
  """Scalars and texts to `workdir/tensorboard/` and `workdir/metrics.jsonl` (process 0 only)."""

  def __init__(self, workdir: str, *, start_step: int = 0):
    """Continues a run whose state is at `start_step`: records of later steps (written before a
    kill, a preemption or a rollback) are dropped, so every logged step has one record."""
    self._enabled = jax.process_index() == 0
    self._workdir = workdir
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._checkpoints = os.path.join(workdir, "checkpoints")
    self._tb = None
    self._jsonl = None
    if self._enabled:
      self._open(start_step)

  def _open(self, start_step: int):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    tb_dir = os.path.join(self._workdir, "tensorboard")
    earlier = os.path.isdir(tb_dir) and any(n.startswith("events.") for n in os.listdir(tb_dir))
    # Event files are append-only; purge_step makes TensorBoard hide the older files' events at
    # steps >= it.
    self._tb = SummaryWriter(tb_dir, purge_step=start_step + 1 if earlier else None)
    with disk.reporting("rewriting the metrics", self._checkpoints, path=self._path):
      truncate_metrics(self._workdir, start_step)
      self._jsonl = open(self._path, "a", buffering=1)

  def rewind(self, step: int):
    """Back to `step` (after a rollback): drops the records past it and reopens."""
    if self._enabled:
      self.close()
      self._open(step)

  def write_scalars(self, step: int, scalars: dict[str, float]):
    if not self._enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    # A line cut short by a full disk is skipped by every reader, and dropped on resume.
    with disk.reporting(f"writing the metrics of step {step}", self._checkpoints,
                        path=self._path):
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")

  def write_histogram(self, step: int, tag: str, values):
    values = np.asarray(values, np.float64)
    if self._enabled and values.size:
      self._tb.add_histogram(tag, values, step, bins="auto")

  def write_image(self, step: int, tag: str, image):
    """image: uint8 [height, width, 3]."""
    if self._enabled:
      self._tb.add_image(tag, np.asarray(image), step, dataformats="HWC")

  def write_text(self, step: int, tag: str, text: str):
    if self._enabled:
      self._tb.add_text(tag, text, step)

  def flush(self):
    if self._enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self):
    if self._enabled:
      self._tb.close()
      with disk.reporting("writing the metrics", self._checkpoints, path=self._path):
        self._jsonl.close()


def _records(path: str) -> list[dict]:
  """The parsable lines of a metrics.jsonl; a line cut short by a kill is skipped."""
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:
        continue
  return out


def truncate_metrics(workdir: str, step: int):
  """Keeps the records of steps <= `step` in `workdir/metrics.jsonl`, replacing it atomically."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  kept = [r for r in _records(path) if r.get("step", 0) <= step]
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl`; a resumed run's repeated steps keep the latest."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  by_key = {}
  for rec in _records(path):
    by_key[(rec["step"], tuple(sorted(rec)))] = rec
  return sorted(by_key.values(), key=lambda r: r["step"])


def summarize(host_metrics: list[dict]) -> dict[str, float]:
  """{"train/<name>": mean over the steps} of the metrics of the steps since the last report."""
  scalars = {}
  for k in host_metrics[0]:
    v = np.asarray([m[k] for m in host_metrics], np.float64)
    if k == "extra_loss":  # NaN in the steps without an extra update
      if np.any(np.isfinite(v)):
        scalars[f"train/{k}"] = float(np.nanmean(v))
    else:
      scalars[f"train/{k}"] = float(np.mean(v))
  return scalars


class Progress:
  """Steps/s, tokens/s and ETA between reports."""

  def __init__(self, total_steps: int, tokens_per_step: int, first_step: int):
    self._total = total_steps
    self._tokens = tokens_per_step
    self._last_step, self._last_time = first_step, time.perf_counter()

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self._total - step) / rate if rate > 0 else float("inf")
    return {"steps_per_sec": rate, "tokens_per_sec": rate * self._tokens, "eta_sec": eta}


def log_progress(step: int, total: int, metrics: dict[str, float], progress: dict[str, float]):
  eta = progress["eta_sec"]
  eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?"
  logging.info("step %d/%d (%.0f%%) loss %.4f bpb %.4f | %.2f steps/s %.0f tok/s ETA %s",
               step, total, 100 * step / total, metrics.get("train/loss", float("nan")),
               metrics.get("train/bits_per_byte", float("nan")), progress["steps_per_sec"],
               progress["tokens_per_sec"], eta_text)

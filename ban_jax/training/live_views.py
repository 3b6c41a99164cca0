"""What TensorBoard shows while a run trains, beyond scalars, and the profiler trace.

At every log step: the per-head gravity masses (a histogram per layer and a layer × head image)
and the BAN's focus usage (a layer × branch image and a histogram per layer). The PNGs in the
workdir are the same views at the end of the run only. `StepTrace` records
`config.train.profile_steps` steps with `jax.profiler` into the TensorBoard folder (the
Profile tab), with a Perfetto trace (`*.trace.json.gz`, open in ui.perfetto.dev) beside it.
"""

import os
import re

import flax
import jax
import numpy as np

from ban_jax.models import scan

# train/diagnostics/layer_<i>/.../focus_usage_<n>, as `BranchedAttractor` sows it.
_FOCUS = re.compile(r"train/diagnostics/layer_(\d+)/.*focus_usage_(\d+)$")
_CELL = 16  # pixels per grid cell in the images


def masses(params, layer_format: str = "layer_{}") -> dict[str, np.ndarray]:
  """{path: M [heads]} of every `gravity_mass_log` in `params` (M = softplus), host float64,
  under per-layer paths (`layer_format`, the model's `LAYER_FORMAT`) if the layers are scanned."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  # Tiny and replicated: every process can read them, even under FSDP.
  raw = jax.device_get({k: v for k, v in flat.items() if k.endswith("gravity_mass_log")})
  raw = scan.per_layer(raw, layer_format)
  return {k: np.logaddexp(0.0, np.asarray(v, np.float64)).reshape(-1)
          for k, v in sorted(raw.items())}


def focus_grid(scalars: dict[str, float]) -> np.ndarray | None:
  """float [layers, branches] focus usage from the logged scalars; None without a BAN."""
  cells = {}
  for key, value in scalars.items():
    m = _FOCUS.match(key)
    if m:
      cells[(int(m.group(1)), int(m.group(2)))] = value
  if not cells:
    return None
  grid = np.full((1 + max(l for l, _ in cells), 1 + max(b for _, b in cells)), np.nan)
  for (l, b), v in cells.items():
    grid[l, b] = v
  return grid


def grid_image(grid, *, vmin: float, vmax: float) -> np.ndarray:
  """uint8 [rows·16, cols·16, 3]: `grid` [rows, cols] in viridis, NaN black."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  grid = np.asarray(grid, np.float64)
  scaled = (grid - vmin) / max(vmax - vmin, 1e-12)
  rgb = colormaps["viridis"](np.clip(np.nan_to_num(scaled), 0.0, 1.0))[..., :3]
  rgb[np.isnan(grid)] = 0.0
  rgb = np.repeat(np.repeat(rgb, _CELL, axis=0), _CELL, axis=1)
  return (rgb * 255).round().astype(np.uint8)


def write(writer, step: int, params, scalars: dict[str, float], layer_format: str = "layer_{}"):
  """Writes the mass and focus-usage views of `step` through a `writers.MetricWriter`."""
  found = masses(params, layer_format)
  for path, m in found.items():
    writer.write_histogram(step, f"masses/{path}", m)
  if found and len({m.size for m in found.values()}) == 1:
    grid = np.stack(list(found.values()))
    writer.write_image(step, "masses/layer_x_head", grid_image(grid, vmin=0.0,
                                                               vmax=float(grid.max())))
  focus = focus_grid(scalars)
  if focus is not None:
    writer.write_image(step, "focus_usage/layer_x_branch", grid_image(focus, vmin=0.0,
                                                                      vmax=1.0))
    for layer, row in enumerate(focus):
      writer.write_histogram(step, f"focus_usage/layer_{layer}", row[~np.isnan(row)])


class StepTrace:
  """A `jax.profiler` trace of `steps` training steps, starting after the first (compiling)
  step of this process, into `logdir` (TensorBoard's Profile tab reads it there)."""

  def __init__(self, logdir: str, *, first_step: int, steps: int):
    self._logdir = logdir
    self._start = first_step + 1 if steps > 0 else None
    self._stop = None if self._start is None else self._start + steps
    self._active = False

  def before(self, step: int):
    if step == self._start:
      os.makedirs(self._logdir, exist_ok=True)
      jax.profiler.start_trace(self._logdir, create_perfetto_trace=True)
      self._active = True

  def after(self, done: int, state):
    if self._active and done >= self._stop:
      self.stop(state)

  def stop(self, state=None):
    """Ends the trace (waiting for `state`, so the traced steps are complete)."""
    if self._active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._active = False

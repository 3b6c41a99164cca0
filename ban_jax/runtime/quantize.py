"""Weight-only quantisation for `.banx` files: int8 with float32 scales, and float16.

int8 is symmetric: w ≈ q · s with q = round(w / s) in [-127, 127] and s = max|w| / 127 taken
per output channel, i.e. over the axes a matrix contracts (`contracted`), kept for every other
axis. With `group` > 0 the first contracted axis is cut into groups of that many inputs, each
with its own scale (finer scales, more of them). A scale array always has the weight's number
of dimensions, so `dequantize` needs no description of the layout: an axis where the scale has
fewer entries than the weight (and more than one) is grouped.
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float16", "int8")
# Tensors smaller than this (norm scales, biases, per-head scalars, the tagging vector) stay
# float32: quantising them saves nothing and their error is not averaged over many inputs.
MIN_QUANTISED_SIZE = 1024


def scale_shape_of(shape, contracted, group: int = 0) -> tuple[int, ...]:
  """The shape of the scales of a weight of `shape` (1 on contracted axes; groups on the first)."""
  out = list(shape)
  for i, axis in enumerate(contracted):
    out[axis] = 1
    if group and i == 0 and shape[axis] % group == 0 and shape[axis] > group:
      out[axis] = shape[axis] // group
  return tuple(out)


def quantize_int8(w: np.ndarray, contracted, group: int = 0):
  """Symmetric int8 quantisation of one weight.

  Args:
    w: float [...] weight.
    contracted: the axes its matmul sums over (scales are shared along them).
    group: inputs per scale along the first contracted axis; 0: one scale per output channel.

  Returns:
    (q int8 [...] like w, scale float32 [...] of `scale_shape_of`); |w − q·s| ≤ s/2 elementwise.
  """
  w = np.asarray(w, np.float32)
  target = scale_shape_of(w.shape, contracted, group)
  view, reduce_axes = _grouped_view(w, target)
  peak = np.max(np.abs(view), axis=reduce_axes, keepdims=True).reshape(target)
  scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
  q = np.clip(np.rint(w / expand(scale, w.shape)), -127, 127).astype(np.int8)
  return q, scale


def _grouped_view(w, target):
  """w reshaped so that each scale entry owns one block; the axes to reduce over."""
  shape, reduce_axes = [], []
  for axis, (n, s) in enumerate(zip(w.shape, target)):
    if s == n:
      shape.append(n)
    elif s == 1:
      reduce_axes.append(len(shape))
      shape.append(n)
    else:
      shape.append(s)
      reduce_axes.append(len(shape))
      shape.append(n // s)
  return w.reshape(shape), tuple(reduce_axes)


def expand(scale: np.ndarray, shape) -> np.ndarray:
  """Scales broadcast to a weight's `shape` (grouped axes repeated to full length)."""
  for axis, (n, s) in enumerate(zip(shape, scale.shape)):
    if s not in (1, n):
      scale = np.repeat(scale, n // s, axis=axis)
  return scale


def dequantize(q: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
  """A stored weight as float32: q·s for int8 (scale given), a cast otherwise."""
  if scale is None:
    return q if q.dtype == np.float32 else q.astype(np.float32)
  return q.astype(np.float32) * expand(scale, q.shape)

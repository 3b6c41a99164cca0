"""Tests for ban_jax/training/live_views.py: TensorBoard images and histograms while training,
and the `train.profile_steps` trace."""

import glob
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from ban_jax.training import live_views
from ban_jax.training import train
from ban_jax.training import writers


def _events(workdir):
  """{tag: [kind, ...]} of every summary in the run's TensorBoard event files."""
  tags = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):      # TFRecord: length, its crc, the record, its crc
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(value.WhichOneof("value"))
  return tags


def test_focus_usage_image_and_histograms_from_the_logged_scalars(tmp_path):
  scalars = {"train/diagnostics/layer_0/attractor/focus_usage_0": 0.75,
             "train/diagnostics/layer_0/attractor/focus_usage_1": 0.25,
             "train/diagnostics/layer_1/attractor/focus_usage_1": 1.0,
             "train/loss": 3.0}
  grid = live_views.focus_grid(scalars)
  np.testing.assert_array_equal(grid, [[0.75, 0.25], [np.nan, 1.0]])
  image = live_views.grid_image(grid, vmin=0.0, vmax=1.0)
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  assert image[16:, :16].max() == 0 and image[16:, 16:].min() > 0   # NaN black, 1.0 bright
  writer = writers.MetricWriter(str(tmp_path))
  live_views.write(writer, 5, {"block": {"w": np.ones(3)}}, scalars)
  writer.close()
  tags = _events(str(tmp_path))
  assert tags["focus_usage/layer_x_branch"] == ["image"]
  assert tags["focus_usage/layer_1"] == ["histo"]
  assert not any(t.startswith("masses/") for t in tags)         # no gravity masses here


def test_run_logs_mass_views_and_profile_steps_leaves_a_trace(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(train__steps=4, train__log_every=2,
                                       train__profile_steps=2, optimizer__warmup_steps=0,
                                       model__attention="gravity", eval__heldout_path="",
                                       eval__sample_length=8), workdir)
  tags = _events(workdir)
  assert tags["masses/layer_x_head"] == ["image", "image"]       # at steps 2 and 4
  assert any(t.startswith("masses/") and t.endswith("gravity_mass_log") for t in tags)
  profile = os.path.join(workdir, "tensorboard", "plugins", "profile")
  assert glob.glob(os.path.join(profile, "*", "*.xplane.pb"))
  assert glob.glob(os.path.join(profile, "*", "*.trace.json.gz"))

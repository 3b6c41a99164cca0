"""Tests for ban_jax/diagnostics/landscape.py."""

import numpy as np

from ban_jax.diagnostics import landscape


def _pairwise(x):
  return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


def test_pca_keeps_a_planted_plane():
  rng = np.random.default_rng()
  plane = rng.normal(size=(60, 2)) * [3.0, 1.0]
  basis = np.linalg.qr(rng.normal(size=(16, 2)))[0]
  x = plane @ basis.T + 1e-6 * rng.normal(size=(60, 16))
  layout = landscape.pca_layout(x)
  np.testing.assert_allclose(_pairwise(layout), _pairwise(plane), atol=1e-4)


def test_mds_recovers_cosine_geometry_of_points_on_a_circle():
  angles = np.linspace(0, np.pi, 30)
  x = np.stack([np.cos(angles), np.sin(angles)], 1) * np.linspace(1, 5, 30)[:, None]
  layout = landscape.mds_layout(np.concatenate([x, np.zeros((30, 5))], 1))
  # Neighbours in angle stay neighbours on the layout.
  order = np.argsort(_pairwise(layout)[0])
  assert list(order[:4]) == [0, 1, 2, 3]
  assert landscape.layout_agreement(layout, x / np.linalg.norm(x, axis=1, keepdims=True)) > 0.8


def test_wells_on_a_planted_potential():
  xy = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
  centres = [(2, 2), (7, 7)]
  phi = 6.0 - sum(np.exp(-((xy - c) ** 2).sum(1) / 2.0) * 3 for c in centres)
  phi[0] = 5.9   # a corner dip that is not more probable than uniform (Φ > log 100)
  assert landscape.local_minima(phi, xy, neighbours=8) == 2
  assert landscape.well_width(phi, within=1e-6) == 2
  assert np.isclose(landscape.well_depth(phi), np.median(phi) - phi.min())

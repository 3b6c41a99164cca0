"""The potential landscape: Φ(t|Q) laid out over the vocabulary, its wells' depth and complexity.

The seed proposes t-SNE/UMAP of the logits; those layouts are stochastic and known to invent
structure, so the vocabulary is laid out twice by deterministic linear-algebra methods on the
output embeddings (the rows that turn the last hidden state into logits): PCA, and classical
(Torgerson) MDS on their cosine distances. The layout is fixed per model; each query paints Φ
over it.
"""

import numpy as np

# Tokens within this many nats of the minimum of Φ count toward a well's complexity.
WITHIN_NATS = 1.0
# Neighbours on the 2D layout against which a local minimum is judged.
NEIGHBOURS = 8


def pca_layout(embeddings):
  """2D coordinates from the top two principal components.

  Args:
    embeddings: float [vocab, width].

  Returns:
    float64 [vocab, 2].
  """
  x = np.asarray(embeddings, np.float64)
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:2].T


def mds_layout(embeddings):
  """2D classical MDS of the cosine distances between embeddings.

  Double-centres the squared distance matrix, B = −½ J D² J, and takes the top two
  eigenvectors scaled by the square roots of their eigenvalues.

  Args:
    embeddings: float [vocab, width].

  Returns:
    float64 [vocab, 2].
  """
  x = np.asarray(embeddings, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  squared = np.maximum(2.0 - 2.0 * x @ x.T, 0.0) ** 2
  n = len(x)
  centre = np.eye(n) - 1.0 / n
  b = -0.5 * centre @ squared @ centre
  values, vectors = np.linalg.eigh(b)
  top = np.argsort(values)[::-1][:2]
  return vectors[:, top] * np.sqrt(np.maximum(values[top], 0.0))


def well_depth(phi) -> float:
  """Median(Φ) − min(Φ), nats: how far the deepest token sits below the typical one."""
  phi = np.asarray(phi, np.float64)
  return float(np.median(phi) - phi.min())


def well_width(phi, within: float = WITHIN_NATS) -> int:
  """How many tokens lie within `within` nats of the minimum of Φ (≥ 1)."""
  phi = np.asarray(phi, np.float64)
  return int((phi <= phi.min() + within).sum())


def local_minima(phi, layout, neighbours: int = NEIGHBOURS) -> int:
  """Wells on the layout: tokens whose Φ is below that of their nearest layout neighbours.

  Only tokens more probable than uniform (Φ < log vocab) count, so the flat, improbable
  plateau does not add noise minima.

  Args:
    phi: float [vocab].
    layout: float [vocab, 2].
    neighbours: how many nearest neighbours (Euclidean, on the layout) a minimum must beat.

  Returns:
    int.
  """
  phi = np.asarray(phi, np.float64)
  xy = np.asarray(layout, np.float64)
  distance = ((xy[:, None] - xy[None]) ** 2).sum(-1)
  np.fill_diagonal(distance, np.inf)
  near = np.argsort(distance, axis=1)[:, :neighbours]
  is_minimum = (phi[:, None] < phi[near]).all(1) & (phi < np.log(phi.size))
  return int(is_minimum.sum())


def layout_agreement(first, second, neighbours: int = NEIGHBOURS) -> float:
  """Mean share of each token's nearest layout neighbours that two layouts have in common."""
  def near(xy):
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1)[:, :neighbours]
  a, b = near(np.asarray(first)), near(np.asarray(second))
  return float(np.mean([len(set(x) & set(y)) / neighbours for x, y in zip(a, b)]))

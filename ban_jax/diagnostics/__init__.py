"""The information-gravity field theory's quantities (seed 001), measured on any Flax LM.

Pure functions over logits, attention weights and model apply functions:
- `potential`: Φ(t|Q) = −log P(t|Q), entropy, KL divergence, the logits-space Hessian.
- `mass`: the information mass M(Q) = α·H(Q) + β·D(Q) + γ·N(Q) and its three components.
- `curvature`: gravity −∇Φ and the Hessian's top eigenvalues with respect to the query's input
  embeddings, through the whole network (Hessian-vector products, never the Hessian).
- `landscape`: the potential laid out over the vocabulary (PCA, classical MDS), well depth and
  complexity.
- `field`: the attention weight against distance, fitted to a power law.
- `cloze`, `sweep`: the factual-cloze errors and the temperature sweep's diversity measures.
- `stats`: Spearman's ρ with bootstrap intervals, logistic regression, AUC (NumPy).

`python -m ban_jax.diagnose` runs the paper's three checks on a trained run with them.
"""

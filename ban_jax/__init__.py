"""ban_jax: information gravity in JAX/Flax.

Gravity attention (`ban_jax.ops.gravity`, `ban_jax.layers`), the Branched Attractor Network
(`ban_jax.models`) and Gravity Wells training (`ban_jax.training`), trained on Wikipedia through
TFDS + grain (`ban_jax.data`).
"""

__version__ = "0.1.0"

"""ban_jax.training."""

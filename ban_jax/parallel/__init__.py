"""ban_jax.parallel."""

"""ban_jax.layers."""

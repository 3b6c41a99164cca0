"""ban_jax.ops."""

"""ban_jax.data."""

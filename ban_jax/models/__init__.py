"""ban_jax.models."""

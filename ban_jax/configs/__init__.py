"""`get_config(preset)` ml-collections configs, shipped inside the package (and so the wheel).

Pass one as `--config=configs/wiki.py[:PRESET]`: from a checkout's root that is the top-level
shim, anywhere else `ban_jax.config_file.resolve` finds this package's copy.
"""

"""The checkout's `configs/wiki.py`: the packaged `ban_jax/configs/wiki.py`, re-exported.

The config moved into the package so that an installed wheel carries it; this file keeps
`--config=configs/wiki.py[:PRESET]` from the repository root and `from configs import wiki` in
tests and benchmarks working. Edit the packaged file, not this one.
"""

# ml_collections calls get_config on whatever module it loads from this path; the star import
# hands it the packaged one's (and the constants tests and benchmarks read).
from ban_jax.configs.wiki import *  # pylint: disable=wildcard-import,unused-wildcard-import

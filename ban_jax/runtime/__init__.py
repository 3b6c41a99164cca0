"""A NumPy-only runtime for exported models: run a trained BAN or transformer without JAX.

`python -m ban_jax.export --workdir=RUN --out=model.banx [--dtype=int8]` writes one `.banx`
file (config, tokenizer description, weights laid out for `np.memmap`); this package loads it
and decodes through the same bounded KV cache as `ban_jax.inference` (policies full, recent,
sinks, gravity), with the same sampling (temperature, top-k, nucleus):

    python -m ban_jax.runtime --model=model.banx --prompt="The history of " --length=200

The package imports NumPy, the standard library and its own modules only (relative imports),
so copying this folder and the model file to a device is enough:

    cp -r ban_jax/runtime model.banx DEVICE_DIR/ && cd DEVICE_DIR && pip install numpy
    python -m runtime --model=model.banx --prompt="The history of "

Modules: `banx` (the file format), `quantize` (int8 / float16 weights), `cache` (the slot
cache and its policies), `layers` (attention, the branched attractor, the MLP), `model` (load,
prefill, step, score), `sampling`, `__main__` (the CLI).
"""

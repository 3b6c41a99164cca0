"""Language modelling on English Wikipedia.

Presets (`--config=configs/wiki.py:PRESET`; no preset means `default`). The file lives in the
package, so an installed wheel carries it; `configs/wiki.py` at the top of a checkout re-exports
it, and `--config` looks a relative path that the current folder lacks up in the package
(`ban_jax.config_file.resolve`), so the same flag works from any folder.
  default      the full system of the Information Gravity paper, ~5M parameters: the Branched
               Attractor Network with gravity attention (the inverse-square score, which beat
               Gravity-2's in the ablation), context tagging, the power-law positional field,
               and Gravity Wells; sized to the bundled data (<= 4 epochs).
  ban          the same BAN with dot-product attention and RoPE, no wells (the default before
               the full system).
  transformer  the dot-product + RoPE transformer at the BAN's parameter count (alias:
               `baseline`, its old name).
  wikipedia    the default model on full English Wikipedia through TFDS (needs the prepared
               dataset; see the README), its step count derived from a token budget.
  colab_v5e    the full system sized for one Colab TPU v5e-1 on Wikipedia: the largest BAN
               that trains at 64 x 512 tokens a step within 80% of the chip's HBM and reaches
               20 tokens per parameter in a roofline time of <= 12 hours
               (bench/colab_preset.py, compiled for the chip with `ban_jax.aot`).
  smoke        the README quickstart: the full system at 100k parameters, 1,200 steps, under
               5 minutes on 2 CPU cores.
  tiny         the transformer shrunk to seconds per run (1 layer of width 32, 64-token
               windows, 20 steps of batch 8): what the training-system tests start from.

Any field can be overridden on the command line, e.g. `--config.train.steps=2000`.
"""

import os

from absl import logging
import ml_collections

PRESETS = ("default", "ban", "transformer", "wikipedia", "colab_v5e", "smoke", "tiny")
ALIASES = {"baseline": "transformer"}   # old name -> preset

# The wikipedia preset's training tokens: about 20 per parameter of the ~5M-parameter default
# (the compute-optimal ratio of Hoffmann et al., 2022), well under one epoch of English
# Wikipedia (~20 GB of text), so no window repeats.
WIKIPEDIA_TOKENS = 100_000_000
# The colab_v5e model's parameter count (bytes vocabulary), for its 20-tokens-per-parameter
# step count; tests/test_configs.py checks it against the built model.
COLAB_V5E_PARAMS = 176_556_564


HELDOUT_FILE = "wikitext2_valid.txt"
HELDOUT_DIR_ENV = "BAN_JAX_HELDOUT_DIR"


# The full system's attention score, chosen by the ablation (full_inverse_square vs full).
DEFAULT_SCORE = "inverse_square"
# Layers under nn.scan (model.scan_layers): on a TPU the default's train step compiles ~1/3
# faster (bench/results/compile_time_tpu_v5e-1.json); on XLA:CPU it compiles slower, and a
# workdir of a per-layer run resumes only per-layer, so the presets run on CPU keep it off.
SCAN_LAYERS = False


def heldout_default() -> str:
  """WikiText-2's validation text for the held-out evaluation, or "" (skipped) if absent.

  From the folder named by $BAN_JAX_HELDOUT_DIR, else, in a source checkout, the shared data
  folder beside it (../shared/data). An installed wheel has no checkout: only the variable.
  """
  folder = os.environ.get(HELDOUT_DIR_ENV)
  if not folder:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Installed, `repo` is site-packages' parent: never read a stray folder beside it.
    if not os.path.isfile(os.path.join(repo, "setup.cfg")):
      return ""
    folder = os.path.join(repo, "..", "shared", "data")
  path = os.path.normpath(os.path.join(folder, HELDOUT_FILE))
  return path if os.path.exists(path) else ""


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """Returns the config of `preset` (one of PRESETS, or an alias in ALIASES)."""
  if preset in ALIASES:
    # The CLI loads this file twice (its own checks, then ml_collections): say it once.
    logging.log_first_n(logging.WARNING, "preset %r is now called %r; using it.", 1, preset,
                        ALIASES[preset])
    preset = ALIASES[preset]
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/wiki.py; choose one of {PRESETS}, "
                     "e.g. --config=configs/wiki.py:smoke")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0

  # Where text comes from and how it becomes token windows.
  c.data = ml_collections.ConfigDict()
  c.data.source = "bundled"          # bundled | dump | tfds
  c.data.tfds_name = "wikipedia/20231101.en"  # for source=tfds (wiki40b/en works too)
  c.data.tfds_data_dir = ""          # "" = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.data.try_gcs = False             # source=tfds: read gs://tensorflow-datasets if reachable
  c.data.dump_dir = ""               # source=dump: folder holding *pages-articles*.xml.bz2
  c.data.build_workers = 1           # processes that clean wikitext when building a dump
  c.data.train_split = "train"       # for wikipedia/20231101.en (train only): "train[:99%]"
  c.data.validation_split = "validation"  # ... and "train[99%:]"
  c.data.text_key = "text"
  c.data.tokenizer = "bytes"         # bytes (vocab 259, metric = bits/byte) | spm
  c.data.spm_model = ""              # spm: a trained model; "" trains one on the train split
  c.data.spm_vocab_size = 4096
  c.data.spm_train_documents = 20_000
  c.data.seq_len = 512
  c.data.preload_max_tokens = 100_000_000  # splits up to this size are held in memory
  c.data.cache_dir = ""              # document-length cache; "" = ~/.cache/ban_jax
  c.data.read_threads = 2
  c.data.prefetch = 4

  # The network. name selects the model in ban_jax/models/__init__.py, whose make_config maps
  # these flat fields onto the model's config dataclass (BANConfig, TransformerConfig).
  # The BAN presets against the transformer at the same parameter count: their only difference
  # is the per-position layer, the BAN's branched attractor against the transformer's
  # 256→1024→256 feed-forward; tiny is that transformer shrunk.
  if preset in ("transformer", "tiny"):
    c.model = _transformer()
  else:
    c.model = _ban()
  if preset in ("default", "wikipedia", "colab_v5e"):
    # inverse_square, not Gravity-2's "gravity": 2.905 vs 2.960 bits/byte in the full system at
    # equal FLOPs, 3 seeds each (bench/ablation.py, docs/results.md).
    c.model.update(attention=DEFAULT_SCORE, tagging=True, positional="power_law")

  # Optimisation loop.
  c.train = ml_collections.ConfigDict()
  c.train.steps = 20_000
  c.train.batch_size = 64            # global, over all devices
  c.train.log_every = 50
  c.train.z_loss = 1e-4              # log(Z)² penalty that keeps the softmax normaliser bounded
  # A non-finite loss or gradient: "stop" (one error naming the step and the newest checkpoint)
  # or "rollback" (restore that checkpoint, skip the batch that diverged, go on).
  c.train.nan_policy = "stop"
  c.train.max_rollbacks = 3          # rollbacks before giving up
  # Steps to record with jax.profiler after the first (compiling) one, into the TensorBoard
  # folder (Profile tab; a Perfetto *.trace.json.gz beside it); 0: none.
  c.train.profile_steps = 0
  # JAX's persistent compilation cache: a rerun (a resume, a second Colab cell, the training
  # after `ban_jax.aot` checked the same program) loads its compiled steps instead of
  # compiling again. One subfolder per backend and device count; not used by multi-process
  # runs. "" turns it off.
  c.train.compilation_cache_dir = "~/.cache/ban_jax/jax_compilation_cache"
  # One run per workdir: the run holds workdir/ban_jax.lock and refreshes it this often (and at
  # every log step and checkpoint); another run takes it over only when this one's process is
  # gone or it went 3 intervals without a refresh (training/lock.py).
  c.train.lock_refresh_s = 60.0

  # AdamW with linear warm-up and cosine decay, global-norm clipping.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 1_000
  c.optimizer.end_learning_rate_ratio = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0

  # Validation bits/byte, the held-out text and a generated sample.
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 1_000
  c.eval.batch_size = 64
  c.eval.max_batches = 0             # 0 = the whole validation split
  c.eval.heldout_path = heldout_default()  # a text file; "" = no held-out evaluation
  c.eval.heldout_max_batches = 0
  c.eval.sample_prompt = "The history of "
  c.eval.sample_length = 256
  c.eval.sample_temperature = 0.8

  # orbax CheckpointManager.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1_000
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  # Gravity Wells (the Information Gravity paper) and its controls: extra updates / batch
  # selection from the loss.
  c.wells = ml_collections.ConfigDict()
  c.wells.mode = "off"               # off | wells | uniform (control) | loss_rank (baseline)
  c.wells.per_example = False        # wells: each example's own loss drop (dense storage only)
  c.wells.storage = "dense"          # dense (one slot per window) | table (fixed capacity)
  c.wells.capacity = 65_536          # table storage: slots
  c.wells.threshold = 0.02           # relative drop below the loss EMA that forms a well
  c.wells.draw = "always"            # always: extra update whenever a well exists | recent:
                                     #   only within draw_window steps of a well forming/growing
  c.wells.draw_window = 3            # recent: steps a formation keeps earning extra updates
  c.wells.gain = 1.0                 # strength added per unit of relative drop
  c.wells.ema_decay = 0.9            # the running loss estimate the drop is measured against
  c.wells.warmup_steps = 100         # no wells while the EMA settles (and the LR warms up)
  c.wells.decay = 0.5                # at each epoch end: strength ← baseline + decay·(s − baseline)
  c.wells.baseline = 0.0
  c.wells.floor = 1e-3               # wells weaker than this die
  c.wells.inject_steps = ""          # uniform: JSON list of steps to inject at ("" = every step)
  c.wells.rank_pressure = 100.0      # loss_rank: selection pressure s_e (first vs last rank)

  # Device mesh (data, fsdp). -1 takes every device left over.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.backend = ""                # "" = JAX's default; cpu | gpu | tpu to insist on one
  c.mesh.data = -1
  c.mesh.fsdp = 1                    # > 1 shards parameters and optimizer state
  c.mesh.distributed = False         # multi-host (TPU pod slice, GPU cluster): jax.distributed
  c.mesh.coordinator_address = ""    # "" = detected (TPU, SLURM...); else "host:port" and ...
  c.mesh.num_processes = 0           # ... the process count and ...
  c.mesh.process_id = -1             # ... this process's id

  if preset in ("default", "ban", "transformer"):
    # Sized to the bundled data: its train split is 2.54M byte tokens, 77 steps of 64 x 512,
    # so 300 steps is 3.9 epochs (more epochs only memorise 106 articles).
    c.train.steps = 300
    c.train.log_every = 10
    c.optimizer.warmup_steps = 30
    c.eval.every_steps = 100
    c.checkpoint.every_steps = 100
  if preset == "default":
    c.wells.mode = "wells"
    c.wells.warmup_steps = 30        # one LR warm-up: the EMA needs ~10 steps, the LR 30
  if preset == "colab_v5e":
    # bench/results/colab_preset.json: 176,556,564 parameters, train step 7.15 GiB of a v5e's
    # 16 (with remat), 10.6 h of roofline time for 20 tokens per parameter; the next candidate
    # (width 1280, 16 layers, 315M) fits too but needs 33.4 h. Scanned layers: 8.95 GiB and a
    # 97 s compile here against 176 s unscanned (bench/results/aot_colab_v5e_scanned.json).
    c.model.update(d_model=1024, num_layers=14, num_heads=16, num_kv_heads=16, head_dim=64,
                   remat=True, scan_layers=True)
  if preset in ("wikipedia", "colab_v5e"):
    c.data.source = "tfds"
    c.data.train_split = "train[:99%]"
    c.data.validation_split = "train[99%:]"
    c.train.steps = WIKIPEDIA_TOKENS // (c.train.batch_size * c.data.seq_len)   # 3,051
    c.optimizer.warmup_steps = c.train.steps // 20
    c.eval.max_batches = 50
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    c.wells.mode = "wells"
    c.wells.storage = "table"        # one slot per window would be 40M slots: keep the strongest
  if preset == "colab_v5e":
    c.train.steps = COLAB_V5E_PARAMS * 20 // (c.train.batch_size * c.data.seq_len)  # 107,761
    c.optimizer.warmup_steps = 2_000
    c.eval.every_steps = 2_000
    c.checkpoint.every_steps = 1_000
  if preset == "smoke":
    # The full system, small: 1,200 steps (0.97 epochs) beat gzip on the scored bytes in under
    # 5 minutes on 2 CPU cores (README).
    c.model.update(attention=DEFAULT_SCORE, tagging=True, positional="power_law")
    c.wells.mode = "wells"
    c.wells.warmup_steps = 50
    c.data.seq_len = 128
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 16
    c.model.num_branches = 4
    c.model.attractor_steps = 4
    c.model.dtype = "float32"
    c.train.steps = 1200
    c.train.batch_size = 16
    c.train.log_every = 50
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.0
    c.eval.every_steps = 200
    c.eval.batch_size = 32
    c.eval.max_batches = 20
    c.eval.heldout_max_batches = 20
    c.eval.sample_length = 200
    c.checkpoint.every_steps = 200
  if preset == "tiny":
    c.data.seq_len = 64
    c.model.d_model = 32
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.num_kv_heads = 1
    c.model.head_dim = 16
    c.model.mlp_dim = 64
    c.model.dtype = "float32"
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.log_every = 5
    c.optimizer.warmup_steps = 5
    c.eval.every_steps = 10
    c.eval.batch_size = 8
    c.eval.max_batches = 2
    c.eval.heldout_path = ""
    c.eval.sample_length = 16
    c.checkpoint.every_steps = 10
  return c


def _ban() -> ml_collections.ConfigDict:
  """The Branched Attractor Network at ≈5M parameters (the Information Gravity paper)."""
  m = ml_collections.ConfigDict()
  m.name = "ban"
  m.d_model = 256
  m.num_layers = 6
  m.num_heads = 8
  m.num_kv_heads = 8                 # < num_heads: grouped-query attention
  m.head_dim = 32
  m.attention = "dot"                # dot | gravity | inverse_square (token mixing)
  m.positional = "rope"              # rope | alibi | power_law | none
  m.tagging = False                  # context tagging: a learned mass per token (key_mass)
  m.tagging_source = "hidden"        # hidden: softplus(Dense(h)) | surprisal: of −log P (2 passes)
  # More of the attention layer's settings (AttentionConfig). implementation: auto (the fused
  # Pallas kernel on an NVIDIA GPU for bf16/f16, else XLA) | xla | pallas | reference.
  m.attention_options = ml_collections.ConfigDict({"implementation": "auto"})
  # The branched attractor (per position): N branches, one focus iterated to a fixed point.
  m.num_branches = 5
  m.branch_width = 0                 # 0 = d_model
  m.attractor_steps = 6              # z ← (1−α)z + α·tanh(zW + h + γ·influence), this many times
  m.alpha = 0.5
  m.gamma = 1.0
  m.threshold = 0.02                 # peripheral signal below 2% of the focus drive is zeroed
  m.cap = 0.15                       # ... and above it is capped at 15% of the focus drive
  m.implicit_grad = False            # True: DEQ-style gradients, memory flat in attractor_steps
  m.unroll = True                    # unroll the fixed-step loop (faster on GPU, same maths)
  m.init_scale = 0.5                 # W starts orthogonal × 0.5: a contraction
  m.routing = "scale"                # scale (top-1 routing) | straight_through
  m.load_balance_weight = 0.01
  m.tie_embeddings = True
  m.dropout_rate = 0.0
  m.dtype = "bfloat16"               # activations; parameters stay float32
  m.remat = False
  # One block traced and compiled for the whole stack (nn.scan); parameters under `layers` with
  # a leading layer axis. Export, diagnostics and ban_jax.load see per-layer names either way.
  m.scan_layers = SCAN_LAYERS
  return m


def _transformer() -> ml_collections.ConfigDict:
  """The decoder-only transformer baseline at the BAN default's parameter count."""
  m = ml_collections.ConfigDict()
  m.name = "transformer"
  m.d_model = 256
  m.num_layers = 6
  m.num_heads = 8
  m.num_kv_heads = 8
  m.head_dim = 32
  m.mlp_dim = 1024
  m.attention = "dot"
  m.positional = "rope"
  m.tagging = False
  m.tagging_source = "hidden"
  m.attention_options = ml_collections.ConfigDict({"implementation": "auto"})
  m.dropout_rate = 0.0
  m.dtype = "bfloat16"
  m.remat = False
  # One block traced and compiled for the whole stack (nn.scan); parameters under `layers` with
  # a leading layer axis. Export, diagnostics and ban_jax.load see per-layer names either way.
  m.scan_layers = SCAN_LAYERS
  return m

#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or a pod slice) reading TFDS Wikipedia from the public
# bucket. Run from your workstation:
#   bash launch/tpu_vm.sh TPU_NAME ZONE [PRESET] [GCS_WORKDIR]
# e.g. bash launch/tpu_vm.sh my-v4-8 us-central2-b default gs://my-bucket/ban_jax/default
# The TPU VM must exist (gcloud compute tpus tpu-vm create ...) and this repo must be pushed
# where it can clone it (REPO_URL).
set -euo pipefail
name="$1"; zone="$2"; preset="${3:-default}"; workdir="${4:?a gs:// workdir, shared by all hosts}"
repo_url="${REPO_URL:?set REPO_URL to a git URL of this repository}"
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  [ -d ban_jax ] || git clone $repo_url ban_jax
  cd ban_jax && git pull --ff-only
  pip install -e '.[tpu]'
  python -m ban_jax.main --config=configs/wiki.py:$preset --workdir=$workdir \
    --config.data.source=tfds --config.data.tfds_name=wikipedia/20231101.en \
    --config.data.train_split='train[:99%]' --config.data.validation_split='train[99%:]' \
    --config.data.tfds_data_dir=gs://tensorflow-datasets/datasets --config.data.try_gcs=True \
    --config.model.dtype=bfloat16 --config.mesh.distributed=True
"

#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or a pod slice). Run from your workstation:
#   REPO_URL=https://... bash launch/tpu_vm.sh TPU_NAME ZONE BUCKET [PRESET] [RUN_NAME]
# e.g. REPO_URL=... bash launch/tpu_vm.sh my-v4-8 us-central2-b my-bucket wikipedia run1
#
# Every host mounts gs://BUCKET at /mnt/gcs with gcsfuse and uses /mnt/gcs/ban_jax/RUN_NAME as
# its workdir: checkpoints are shared by all hosts (orbax needs one directory for all of them)
# and metrics are appended by process 0. Data: the wikipedia preset reads TFDS
# wikipedia/20231101.en, prepared in ArrayRecord format under gs://BUCKET/tensorflow_datasets
# (see README, "Data"), through the mount.
set -euo pipefail
name="$1"; zone="$2"; bucket="$3"; preset="${4:-wikipedia}"; run="${5:-$preset}"
repo_url="${REPO_URL:?set REPO_URL to a git URL of this repository}"
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  sudo mkdir -p /mnt/gcs && sudo chown \$USER /mnt/gcs
  mountpoint -q /mnt/gcs || gcsfuse --implicit-dirs $bucket /mnt/gcs
  [ -d ban_jax ] || git clone $repo_url ban_jax
  cd ban_jax && git pull --ff-only
  pip install -e '.[tpu]'
  python -m ban_jax.main --config=configs/wiki.py:$preset --workdir=/mnt/gcs/ban_jax/$run \
    --config.data.tfds_data_dir=/mnt/gcs/tensorflow_datasets \
    --config.model.dtype=bfloat16 --config.mesh.distributed=True
"

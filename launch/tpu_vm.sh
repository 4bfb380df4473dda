#!/usr/bin/env bash
# Cloud TPU VM jobs for mcj: create a VM, install mcj on every worker, run a training
# command on every worker, follow its log, delete the VM.
#
#   export NAME=mcj-v3-32 ZONE=europe-west4-a TYPE=v3-32        # required
#   export VERSION=tpu-ubuntu2204-base PROJECT=my-project       # optional
#   launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup                      # copies this checkout, installs requirements + jax[tpu]
#   launch/tpu_vm.sh run gs://BUCKET/tfds gs://BUCKET/mcj/r50 --config configs/imagenet/resnet.py:model=resnet50
#   launch/tpu_vm.sh logs                       # follows worker 0's log (Ctrl-C leaves the job running)
#   launch/tpu_vm.sh ssh 'nvidia-smi || true'   # any command on all workers
#   launch/tpu_vm.sh stop                       # kills the job (it saves on SIGTERM, rerun resumes)
#   launch/tpu_vm.sh delete
#
# `run` starts `python -m $MODULE` (default mcj.train; MODULE=mcj.search for an architecture
# search, whose candidates then train data-parallel over every chip) on ALL workers at once,
# in the background, with
# TFDS_DATA_DIR set; jax.distributed is initialised automatically on multi-host TPU VMs.
# The workdir must be a gs:// path that every worker can write (checkpoints, metrics).
# Rerunning `run` with the same workdir resumes from the newest checkpoint.
set -euo pipefail

: "${NAME:?set NAME, the TPU VM name}"
: "${ZONE:?set ZONE, e.g. europe-west4-a}"
VERSION=${VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-mcj}
LOG=${LOG:-/tmp/mcj_train.log}
MODULE=${MODULE:-mcj.train}
gc=(gcloud compute tpus tpu-vm)
[[ -n "${PROJECT:-}" ]] && gc+=(--project "$PROJECT")
here=$(cd "$(dirname "$0")/.." && pwd)

on_all() { "${gc[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

cmd=${1:-help}; shift || true
case "$cmd" in
  create)
    : "${TYPE:?set TYPE, e.g. v3-8 or v4-32}"
    "${gc[@]}" create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$VERSION" ;;
  setup)
    tar -C "$here" --exclude=.git --exclude='__pycache__' -czf /tmp/mcj_src.tgz .
    "${gc[@]}" scp /tmp/mcj_src.tgz "$NAME":/tmp/mcj_src.tgz --zone "$ZONE" --worker=all
    on_all "mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf /tmp/mcj_src.tgz && cd ~/$REMOTE_DIR \
      && python3 -m pip install -q -r requirements.txt && python3 -m pip install -q -U 'jax[tpu]'" ;;
  run)
    data_dir=${1:?usage: run TFDS_DATA_DIR WORKDIR --config FILE[:ARG] [--config.key=value ...]}
    workdir=${2:?usage: run TFDS_DATA_DIR WORKDIR --config FILE[:ARG] [--config.key=value ...]}
    shift 2
    args=$(printf '%q ' "$@")
    on_all "cd ~/$REMOTE_DIR && TFDS_DATA_DIR=$data_dir nohup python3 -m $MODULE \
      --workdir $workdir $args > $LOG 2>&1 &"
    echo "started on all workers; follow with: $0 logs" ;;
  logs)
    "${gc[@]}" ssh "$NAME" --zone "$ZONE" --worker=0 --command "tail -n 100 -f $LOG" ;;
  ssh)
    on_all "${1:?usage: ssh COMMAND}" ;;
  stop)
    on_all "pkill -TERM -f '$MODULE' || true" ;;
  delete)
    "${gc[@]}" delete "$NAME" --zone "$ZONE" --quiet ;;
  *)
    sed -n '2,22p' "$0"; exit 1 ;;
esac

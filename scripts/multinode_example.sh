#!/usr/bin/env bash
# Multi-node pretraining through torchrun's c10d rendezvous. Run this same script on every node, with
#   NNODES     number of machines                       (default 2)
#   NODE_RANK  0 on the first machine, 1 on the second, ...
#   MASTER     host:port of node 0, reachable from every node (default 127.0.0.1:29500 = all on this machine)
#   NPROC      processes per node: GPUs per node, or 1 per CPU machine (default 1)
#   RUN        run directory on a filesystem shared by all nodes (every rank reads the shards and checkpoints)
#
#   node 0:  NODE_RANK=0 MASTER=10.0.0.1:29500 RUN=/shared/runs/demo bash scripts/multinode_example.sh
#   node 1:  NODE_RANK=1 MASTER=10.0.0.1:29500 RUN=/shared/runs/demo bash scripts/multinode_example.sh
#
# Backend: NCCL on GPUs, gloo on CPUs (chosen by scalelab.common.init_distributed). The global batch is
# --total-batch-tokens whatever the number of processes, so the run can later resume on one node:
#   scalelab pretrain --run "$RUN"            (same data order, gradient accumulation takes up the difference)
# Extra flags after the script name go to `scalelab pretrain` (e.g. --parallel fsdp --model small).
set -euo pipefail
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}
MASTER=${MASTER:-127.0.0.1:29500}
NPROC=${NPROC:-1}
RUN=${RUN:-runs/multinode}
PY=${PY:-.venv/bin/python}
exec "$PY" -m torch.distributed.run \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc_per_node "$NPROC" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER" --rdzv-id "scalelab-$(basename "$RUN")" \
  -m scalelab pretrain --run-dir "$RUN" --total-batch-tokens 32768 --batch-size 16 --seq-len 256 "$@"

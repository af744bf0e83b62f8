#!/bin/bash
# One SLURM task = one "machine" for Accelerate: started by srun from slurm/*.sbatch, it launches this node's
# processes (one per GPU, or one on CPU) and joins the rendezvous on the job's first node. The machine rank is the
# task's rank (one task per node; several tasks on one node also work, as the tests do on a single machine).
set -euo pipefail
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
GPUS=${SLURM_GPUS_ON_NODE:-${GPUS:-0}}
PER_MACHINE=$(( GPUS > 0 ? GPUS : 1 ))
MACHINES=${SLURM_NTASKS:-1}
if [ "${GPUS}" -gt 0 ]; then PRECISION=bf16; else PRECISION=no; fi
exec accelerate launch --config_file accelerate_configs/multi_node.yaml \
    --num_machines "${MACHINES}" --num_processes $(( MACHINES * PER_MACHINE )) \
    --machine_rank "${SLURM_PROCID:-0}" --main_process_ip "${STELLAR_MAIN_HOST:-127.0.0.1}" \
    --main_process_port "${STELLAR_MAIN_PORT:-29500}" --mixed_precision "${PRECISION}" "$@"

#!/usr/bin/env bash
# SFT with verl's FSDP trainer on an `sdg export` folder (the verl-sft format).
#
#   sdg export out/run                      # writes out/run/export/
#   train/verl_sft.sh out/run/export [extra hydra overrides...]
#
# Environment: MODEL (default Qwen/Qwen2.5-0.5B-Instruct), NPROC (GPUs, default 1), SAVE_DIR.
# Single turn: the user message is `prompt`, the target is `response`; verl applies the model's chat
# template to the prompt. To keep the system message, train on the whole conversation instead:
#   data.multiturn.enable=true data.multiturn.messages_key=messages
set -euo pipefail

EXPORT_DIR=${1:?usage: verl_sft.sh EXPORT_DIR [overrides...]}
shift
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
NPROC=${NPROC:-1}
SAVE_DIR=${SAVE_DIR:-checkpoints/sdg-verl-sft}

TRAIN=$EXPORT_DIR/verl-sft/train.parquet
# Only splits with rows are written; validate on `validation`, else on `test`, else on train.
VAL=$EXPORT_DIR/verl-sft/validation.parquet
[ -f "$VAL" ] || VAL=$EXPORT_DIR/verl-sft/test.parquet
[ -f "$VAL" ] || VAL=$TRAIN

torchrun --standalone --nnodes=1 --nproc_per_node="$NPROC" \
    -m verl.trainer.fsdp_sft_trainer \
    data.train_files="$TRAIN" \
    data.val_files="$VAL" \
    data.prompt_key=prompt \
    data.response_key=response \
    data.prompt_dict_keys=null \
    data.response_dict_keys=null \
    data.max_length=2048 \
    data.truncation=right \
    data.train_batch_size=32 \
    data.micro_batch_size_per_gpu=4 \
    model.partial_pretrain="$MODEL" \
    optim.lr=1e-5 \
    trainer.default_local_dir="$SAVE_DIR" \
    trainer.project_name=sdg-sft \
    trainer.experiment_name=verl-sft \
    trainer.logger="['console']" \
    trainer.total_epochs=2 \
    "$@"

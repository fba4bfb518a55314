#!/usr/bin/env bash
# GRPO with verl on an `sdg export` folder (the verl-rl format), rewarded by train/reward.py.
#
#   sdg export out/run                      # writes out/run/export/
#   train/verl_grpo.sh out/run/export [extra hydra overrides...]
#
# Environment: MODEL (default Qwen/Qwen2.5-0.5B-Instruct), NGPUS (default 1), BATCH (prompts per step,
# default 32; at most the number of training rows).
# Each row's `prompt` is a chat (optional system message, then the user's question); the rollout samples
# n answers, and compute_score in reward.py compares each answer's final answer with
# reward_model.ground_truth (sdg's `answer`).
set -euo pipefail

EXPORT_DIR=${1:?usage: verl_grpo.sh EXPORT_DIR [overrides...]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
NGPUS=${NGPUS:-1}
BATCH=${BATCH:-32}

TRAIN=$EXPORT_DIR/verl-rl/train.parquet
VAL=$EXPORT_DIR/verl-rl/validation.parquet
[ -f "$VAL" ] || VAL=$EXPORT_DIR/verl-rl/test.parquet
[ -f "$VAL" ] || VAL=$TRAIN

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$TRAIN" \
    data.val_files="$VAL" \
    data.prompt_key=prompt \
    data.reward_fn_key=data_source \
    data.train_batch_size="$BATCH" \
    data.max_prompt_length=512 \
    data.max_response_length=1024 \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size="$BATCH" \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=5 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    custom_reward_function.path="$HERE/reward.py" \
    custom_reward_function.name=compute_score \
    trainer.critic_warmup=0 \
    trainer.logger="['console']" \
    trainer.project_name=sdg-grpo \
    trainer.experiment_name=verl-grpo \
    trainer.n_gpus_per_node="$NGPUS" \
    trainer.nnodes=1 \
    trainer.save_freq=-1 \
    trainer.test_freq=5 \
    trainer.total_epochs=15 \
    "$@"

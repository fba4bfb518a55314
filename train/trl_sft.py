"""SFT with TRL on an `sdg export` folder (the messages format).

    pip install trl datasets            # plus torch for your accelerator
    sdg export out/run                  # writes out/run/export/
    python3 train/trl_sft.py out/run/export --model Qwen/Qwen2.5-0.5B-Instruct --output-dir checkpoints/sdg-trl-sft

`load_dataset(EXPORT_DIR, "messages")` reads the config the export's dataset card declares: a `messages`
column of {role, content} turns (optional system, then user, then assistant). SFTTrainer recognises the
conversational format and applies the model's chat template itself.
"""

from __future__ import annotations

import argparse

from datasets import load_dataset
from trl import SFTConfig, SFTTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir")
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("--output-dir", default="checkpoints/sdg-trl-sft")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    dataset = load_dataset(args.export_dir, "messages")
    # Only the conversation is trained on; `id` stays in the export for joining back to the run.
    train = dataset["train"].select_columns(["messages"])
    evaluation = dataset["validation"].select_columns(["messages"]) if "validation" in dataset else None

    config = SFTConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        max_length=args.max_length,
        eval_strategy="epoch" if evaluation is not None else "no",
        logging_steps=10,
        save_strategy="epoch",
        report_to="none",
    )
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=train, eval_dataset=evaluation)
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()

"""Builds the tiny tokenizer fixture in tests/interop/tokenizer/ (run once, offline; the output is committed).

A byte-level BPE with a few hundred merges learnt from a short English text, the ChatML special tokens and
SmolLM2-135M-Instruct's chat template. It is small on purpose: it proves that a real Hugging Face tokenizer
renders sdg's `messages` column, not that it tokenizes well.

    python3 tests/interop/make_tokenizer.py
"""

import json
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = pathlib.Path(__file__).resolve().parent / "tokenizer"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# SmolLM2-135M-Instruct's chat template (ChatML with a default system message).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEXT = """\
A caravan of camels walks across the dunes each day. How many kilometres does it walk in a week?
The answer is the distance per day times seven. Write the final answer after four hashes.
You are a helpful assistant. Answer the question and explain the reasoning step by step.
Paragraph explains how the engine keeps its output deterministic. Every record carries a stable id.
"""


def main() -> None:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT] * 4, trainer=trainer)
    HERE.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(HERE / "tokenizer.json"))

    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
    }
    (HERE / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {HERE}: vocab {tokenizer.get_vocab_size()}")


if __name__ == "__main__":
    main()

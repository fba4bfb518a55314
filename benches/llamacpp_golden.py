#!/usr/bin/env python3
"""Writes the llama.cpp-derived golden files under tests/golden/ (tokenizer ids, chat rendering, greedy ids).

    target/llamacpp-venv/bin/python benches/llamacpp_golden.py /work/models tests/golden
"""

import json
import os
import sys

import jinja2
import jinja2.sandbox
import llama_cpp

MODELS, OUT = sys.argv[1], sys.argv[2]
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"

PLAIN = [
    "Hello   world,  three   spaces\n\n\nand newlines\r\n  trailing  ",
    "Digits 123456 and 3.14159, 1,000,000 items; call 555-0123 at 09:45.",
    "Accents: café, naïve, Ærøskøbing, façade — ¿Qué tal? Ünïcödé",
    "CJK and emoji: 你好，世界！日本語のテキスト 한국어 🙂🚀👍🏽 👨‍👩‍👧",
    "def f(x):\n\tif x > 0:\n\t\treturn x ** 2  # square\n\treturn -x\n",
]


def load(name, vocab_only=True):
    return llama_cpp.Llama(os.path.join(MODELS, name), vocab_only=vocab_only, verbose=False, n_ctx=512)


def tok_text(llm, t):
    return llm.detokenize([t], special=True).decode("utf-8")


def render(llm, messages):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(llm.metadata["tokenizer.chat_template"]).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=tok_text(llm, llm.token_bos()),
        eos_token=tok_text(llm, llm.token_eos()),
    )


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", path)


def plain(llm, add_bos=False):
    return [
        {"text": t, "add_bos": add_bos, "special": False,
         "ids": llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=False)}
        for t in PLAIN
    ]


source = f"llama.cpp tokenizer via llama-cpp-python {llama_cpp.__version__} (Llama(vocab_only=True).tokenize)"

# SmolLM2: chat template rendering + ids, plain texts.
smol = load(SMOL)
cases = []
for messages in (
    [{"role": "system", "content": "You are a careful assistant."},
     {"role": "user", "content": "What is 2+2? Answer briefly, with digits: 1234 and émojis 🙂."}],
    [{"role": "user", "content": "What is 2+2? Answer briefly, with digits: 1234 and émojis 🙂."}],
):
    rendered = render(smol, messages)
    cases.append({"messages": messages, "add_generation_prompt": True, "rendered": rendered,
                  "ids": smol.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)})
dump("smollm2_chat.json", {
    "model": SMOL,
    "source": source,
    "note": "cases: chat template from GGUF metadata rendered with jinja2 (trim_blocks, lstrip_blocks), "
            "tokenized with add_bos=False, special=True. plain: add_bos=False, special=False.",
    "cases": cases,
    "plain": plain(smol),
})

# Gemma 3: plain texts (no BOS), one with BOS, special-token parsing.
gemma = load(GEMMA)
special_text = "<start_of_turn>user\nHi<end_of_turn>\n"
dump("gemma3_ids.json", {
    "model": GEMMA,
    "source": source,
    "bos_id": gemma.token_bos(),
    "eos_id": gemma.token_eos(),
    "plain": plain(gemma),
    "plain_bos": [{"text": PLAIN[0], "add_bos": True, "special": False,
                   "ids": gemma.tokenize(PLAIN[0].encode("utf-8"), add_bos=True, special=False)}],
    "special": [{"text": special_text, "add_bos": False, "special": True,
                 "ids": gemma.tokenize(special_text.encode("utf-8"), add_bos=False, special=True)}],
})

# SmolLM2 greedy continuation, 24 tokens, EOS ignored.
THREADS = 2
llm = llama_cpp.Llama(os.path.join(MODELS, SMOL), n_ctx=512, n_threads=THREADS, n_threads_batch=THREADS,
                      seed=1234, verbose=False)
messages = [{"role": "user", "content": "Write one sentence about the sea."}]
rendered = render(llm, messages)
prompt = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
smpl = llama_cpp.llama_sampler_init_greedy()
llm.eval(prompt)
out, margins, runner_up = [], [], []
n_vocab = llm.n_vocab()
for i in range(24):
    logits = llm._ctx.get_logits_ith(-1)
    row = sorted(((logits[j], j) for j in range(n_vocab)), reverse=True)[:2]
    t = llama_cpp.llama_sampler_sample(smpl, llm._ctx.ctx, -1)
    assert t == row[0][1], (t, row)
    out.append(t)
    margins.append(round(float(row[0][0] - row[1][0]), 4))
    runner_up.append(row[1][1])
    if i < 23:
        llm.eval([t])
llama_cpp.llama_sampler_free(smpl)
dump("smollm2_greedy.json", {
    "model": SMOL,
    "source": f"llama.cpp output via llama-cpp-python {llama_cpp.__version__}, CPU, n_threads={THREADS}, "
              "greedy (llama_sampler_init_greedy), EOS not stopped on. Our engine may differ slightly "
              "due to float summation order; compare the first few tokens.",
    "messages": messages,
    "rendered": rendered,
    "prompt_ids": prompt,
    "max_tokens": 24,
    "ids": out,
    "top1_minus_top2_logit": margins,
    "runner_up_ids": runner_up,
    "note": "Several steps are near-ties (margin < 0.1): a different float summation order can flip them "
            "and the continuation diverges from there. Compare ids up to the first small margin, or "
            "teacher-force the reference ids and check that each step's argmax is the reference id or the runner-up.",
    "text": llm.detokenize(out).decode("utf-8", errors="replace"),
    "text_special": llm.detokenize(out, special=True).decode("utf-8", errors="replace"),
})

#!/usr/bin/env python3
"""llama.cpp reference figures for the local-model benchmark (CPU, via llama-cpp-python).

    bash benches/setup-llamacpp.sh                      # once: builds llama-cpp-python into target/llamacpp-venv
    target/llamacpp-venv/bin/python benches/llamacpp_reference.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \
        --prompt-file benches/prompts/sea.txt --max-tokens 128 --batch 4,8,16

The prompt is rendered as ONE user message through the GGUF's own chat template (jinja2,
add_generation_prompt=True) and tokenized with special tokens parsed and no extra BOS, so the
model sees exactly the ids the template spells out. Decoding is greedy (argmax, llama.cpp's greedy
sampler) and ignores EOS, so exactly --max-tokens tokens are generated every run.

Single sequence (the Llama object, n_ctx=2048):
  ttft_ms       prefill of the prompt + sampling of the first token
  decode_tok_s  (max_tokens - 1) / time of the remaining single-token decode steps
  total_ms      ttft + decode
Each is the median of --repeats runs (default 3) after one unmeasured warm-up run.

Batched (--batch): for N parallel sequences of the same prompt in one context (unified KV cache),
the prompt is prefilled once with every token shared by all N sequences, then each step decodes
one token per sequence in a single llama_decode. decode_tok_s is N * (max_tokens - 1) / decode
time (aggregate), total_tok_s is N * max_tokens / (prefill + decode).

Prints one JSON object on stdout.
"""

import argparse
import ctypes
import json
import statistics
import sys
import time

import jinja2
import jinja2.sandbox
import llama_cpp


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def token_text(llm, token_id):
    return llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")


def render_chat(llm, messages):
    """Renders the GGUF's tokenizer.chat_template the way HF transformers does."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        return None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    bos = llm.token_bos()
    eos = llm.token_eos()
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=token_text(llm, bos) if bos >= 0 else "",
        eos_token=token_text(llm, eos) if eos >= 0 else "",
    )


def prompt_ids(llm, prompt):
    rendered = render_chat(llm, [{"role": "user", "content": prompt}])
    if rendered is not None:
        return "gguf", llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
    arch = llm.metadata.get("general.architecture", "")
    if arch.startswith("gemma"):
        # Gemma GGUFs converted without a template: Gemma's documented turn format.
        text = f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
        return "gemma-builtin", llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    fail("the GGUF has no tokenizer.chat_template and no built-in fallback for its architecture")


class Greedy:
    """llama.cpp's own greedy sampler (argmax over the logits of one output row)."""

    def __init__(self):
        self.smpl = llama_cpp.llama_sampler_init_greedy()

    def sample(self, ctx, idx=-1):
        return llama_cpp.llama_sampler_sample(self.smpl, ctx, idx)

    def close(self):
        llama_cpp.llama_sampler_free(self.smpl)


def run_single(llm, greedy, ids, max_tokens):
    llm.reset()
    ctx = llm._ctx.ctx
    t0 = time.perf_counter()
    llm.eval(ids)
    tok = greedy.sample(ctx)
    t1 = time.perf_counter()
    out = [tok]
    for _ in range(max_tokens - 1):
        llm.eval([tok])
        tok = greedy.sample(ctx)
        out.append(tok)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1), out


def batch_set(batch, i, token, pos, seq_ids, logits):
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = len(seq_ids)
    for j, s in enumerate(seq_ids):
        batch.seq_id[i][j] = s
    batch.logits[i] = 1 if logits else 0


def run_batched(llm, greedy, ids, max_tokens, n_par, threads):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = len(ids) + n_par * max_tokens + 64
    params.n_batch = max(len(ids), n_par)
    params.n_ubatch = min(512, params.n_batch)
    params.n_seq_max = n_par
    params.n_threads = threads
    params.n_threads_batch = threads
    params.kv_unified = True  # the prompt's KV cells are shared by every sequence
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    batch = llama_cpp.llama_batch_init(max(len(ids), n_par), 0, n_par)
    try:
        everyone = list(range(n_par))
        t0 = time.perf_counter()
        batch.n_tokens = len(ids)
        for i, t in enumerate(ids):
            batch_set(batch, i, t, i, everyone, i == len(ids) - 1)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode (prefill) failed")
        first = greedy.sample(ctx, len(ids) - 1)
        t1 = time.perf_counter()
        toks = [first] * n_par
        outs = [[first] for _ in range(n_par)]
        for step in range(max_tokens - 1):
            batch.n_tokens = n_par
            for s in range(n_par):
                batch_set(batch, s, toks[s], len(ids) + step, [s], True)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError(f"llama_decode failed at step {step}")
            for s in range(n_par):
                toks[s] = greedy.sample(ctx, s)
                outs[s].append(toks[s])
        t2 = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return (t1 - t0), (t2 - t1), outs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-file", required=True)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch", default="", help="comma-separated parallel sequence counts, e.g. 4,8,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if args.max_tokens < 2:
        fail("--max-tokens must be at least 2")

    with open(args.prompt_file, encoding="utf-8") as f:
        prompt = f.read().strip()

    t_load = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=2048,
        n_batch=512,
        seed=args.seed,
        verbose=False,
    )
    load_ms = (time.perf_counter() - t_load) * 1e3
    template, ids = prompt_ids(llm, prompt)
    if len(ids) + args.max_tokens > 2048:
        fail(f"prompt ({len(ids)} tokens) + max tokens exceeds n_ctx 2048")

    greedy = Greedy()
    run_single(llm, greedy, ids, args.max_tokens)  # warm-up: page in the weights, size the buffers
    ttft, decode, total = [], [], []
    out = None
    for _ in range(args.repeats):
        t_first_ms, t_decode_s, toks = run_single(llm, greedy, ids, args.max_tokens)
        if out is not None and toks != out:
            print("warning: greedy output differed between runs", file=sys.stderr)
        out = toks
        ttft.append(t_first_ms)
        decode.append((args.max_tokens - 1) / t_decode_s)
        total.append(t_first_ms + t_decode_s * 1e3)

    result = {
        "engine": "llama.cpp",
        "binding": "llama-cpp-python",
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
        "model": args.model.rsplit("/", 1)[-1],
        "threads": args.threads,
        "chat_template": template,
        "prompt_tokens": len(ids),
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "load_ms": round(load_ms, 1),
        "ttft_ms": round(statistics.median(ttft), 2),
        "decode_tok_s": round(statistics.median(decode), 2),
        "total_ms": round(statistics.median(total), 2),
        "runs": {
            "ttft_ms": [round(x, 2) for x in ttft],
            "decode_tok_s": [round(x, 2) for x in decode],
        },
        "prefill_tok_s": round(len(ids) / (statistics.median(ttft) / 1e3), 1),
        "first_tokens": out[:16],
        "first_text": llm.detokenize(out[:16]).decode("utf-8", errors="replace"),
    }

    sizes = [int(x) for x in args.batch.split(",") if x.strip()]
    if sizes:
        batched = {}
        for n in sizes:
            runs = []
            for _ in range(args.repeats):
                t_prefill, t_decode, outs = run_batched(llm, greedy, ids, args.max_tokens, n, args.threads)
                runs.append((t_prefill, t_decode, outs))
            t_prefill = statistics.median(r[0] for r in runs)
            t_decode = statistics.median(r[1] for r in runs)
            outs = runs[-1][2]
            batched[str(n)] = {
                "decode_tok_s": round(n * (args.max_tokens - 1) / t_decode, 2),
                "total_tok_s": round(n * args.max_tokens / (t_prefill + t_decode), 2),
                "prefill_ms": round(t_prefill * 1e3, 2),
                "same_as_single": all(o == out for o in outs),
            }
        result["batched"] = batched
        result["batched_method"] = (
            "one context, unified KV cache, prompt prefilled once for all sequences, one llama_decode "
            "per step with one token per sequence; decode_tok_s is aggregate, median of repeats"
        )
    else:
        result["batched"] = "not measured (no --batch)"

    greedy.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

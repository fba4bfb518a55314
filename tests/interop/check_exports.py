"""Reads an `sdg export` folder the way its users do, and fails on anything they would trip over.

    python3 tests/interop/check_exports.py EXPORT_DIR [--tokenizer DIR] [--format F]... [--system TEXT] [--reward FILE]

With pyarrow, datasets and transformers (no torch needed) it:
  * loads every format with `datasets.load_dataset(EXPORT_DIR/FORMAT)` (splits named by the file names), every
    config of the dataset card with `datasets.load_dataset(EXPORT_DIR, FORMAT)` (the Parquet formats must
    have one; `datasets` reads all configs of a folder with one builder, so JSONL ones cannot), and the
    Parquet files with `pyarrow.parquet.read_table`;
  * checks the Arrow types verl reads (`prompt` is list<struct<content: string, role: string>>, `reward_model`
    is struct<ground_truth: string, style: string>, `extra_info.index` is int64, ...), the roles of every
    conversation, and the keys of the alpaca and sharegpt JSONL;
  * checks that every format holds the same rows in the same splits (by id where the format has one, by
    text where it has not), and that split names are train, validation or test;
  * with --system TEXT, checks that every conversation starts with that system message;
  * with --reward FILE, runs a verl reward function (`compute_score`) on every verl-rl row;
  * renders every `messages` conversation (and every verl-rl prompt, with the generation prompt, as verl does)
    with the chat template of a real Hugging Face tokenizer, and checks that each message's content appears,
    in order.
It prints a short summary and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import sys
import tempfile
import traceback

# Leave no __pycache__ next to the reward file in the repository.
sys.dont_write_bytecode = True
# Everything is local: never ask the Hub, and keep transformers quiet about the missing torch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import datasets  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402  (a dependency of datasets)

PARQUET_FORMATS = ["verl-rl", "verl-sft", "messages"]
JSONL_FORMATS = ["alpaca", "sharegpt", "jsonl"]
ALL_FORMATS = PARQUET_FORMATS + JSONL_FORMATS
SPLITS = ["train", "validation", "test"]
DEFAULT_TOKENIZER = pathlib.Path(__file__).resolve().parent / "tokenizer"


class Checks:
    """Collects failures instead of stopping at the first, so one run shows everything that is wrong."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, condition: bool, message: str) -> bool:
        if condition:
            self.passed += 1
        else:
            self.failures.append(message)
        return condition


# ---------------------------------------------------------------------------------------------- Arrow types


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def struct_fields(t: pa.DataType) -> dict[str, pa.DataType]:
    return {t.field(i).name: t.field(i).type for i in range(t.num_fields)}


def is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def describe(t: pa.DataType) -> str:
    return str(t)


def check_message_list(c: Checks, where: str, t: pa.DataType) -> None:
    """`t` must be list<struct<content: string, role: string>>."""
    if not c.check(is_list(t), f"{where}: expected list<struct<content: string, role: string>>, got {describe(t)}"):
        return
    item = t.value_type
    if not c.check(pa.types.is_struct(item), f"{where}: list items must be structs, got {describe(item)}"):
        return
    fields = struct_fields(item)
    c.check(
        sorted(fields) == ["content", "role"],
        f"{where}: message struct fields must be exactly content and role, got {sorted(fields)}",
    )
    for name in ("content", "role"):
        if name in fields:
            c.check(is_string(fields[name]), f"{where}.{name}: expected string, got {describe(fields[name])}")


def check_extra_info(c: Checks, where: str, t: pa.DataType) -> None:
    """`t` must be a struct with at least index: int64, split: string, id: string."""
    if not c.check(pa.types.is_struct(t), f"{where}: expected a struct, got {describe(t)}"):
        return
    fields = struct_fields(t)
    wanted = {"index": pa.int64(), "split": pa.string(), "id": pa.string()}
    for name, want in wanted.items():
        if c.check(name in fields, f"{where}: missing field `{name}` (has {sorted(fields)})"):
            ok = fields[name] == want or (want == pa.string() and is_string(fields[name]))
            c.check(ok, f"{where}.{name}: expected {want}, got {describe(fields[name])}")


def check_verl_rl_schema(c: Checks, where: str, schema: pa.Schema) -> None:
    names = set(schema.names)
    for name in ("data_source", "prompt", "ability", "reward_model", "extra_info"):
        c.check(name in names, f"{where}: missing column `{name}` (has {sorted(names)})")
    if "data_source" in names:
        c.check(is_string(schema.field("data_source").type), f"{where}.data_source: expected string")
    if "ability" in names:
        c.check(is_string(schema.field("ability").type), f"{where}.ability: expected string")
    if "prompt" in names:
        check_message_list(c, f"{where}.prompt", schema.field("prompt").type)
    if "reward_model" in names:
        t = schema.field("reward_model").type
        if c.check(pa.types.is_struct(t), f"{where}.reward_model: expected a struct, got {describe(t)}"):
            fields = struct_fields(t)
            c.check(
                sorted(fields) == ["ground_truth", "style"],
                f"{where}.reward_model: expected fields ground_truth and style, got {sorted(fields)}",
            )
            for name in ("ground_truth", "style"):
                if name in fields:
                    c.check(is_string(fields[name]), f"{where}.reward_model.{name}: expected string")
    if "extra_info" in names:
        check_extra_info(c, f"{where}.extra_info", schema.field("extra_info").type)


def check_verl_sft_schema(c: Checks, where: str, schema: pa.Schema) -> None:
    names = set(schema.names)
    for name in ("messages", "prompt", "response", "extra_info"):
        c.check(name in names, f"{where}: missing column `{name}` (has {sorted(names)})")
    if "messages" in names:
        check_message_list(c, f"{where}.messages", schema.field("messages").type)
    for name in ("prompt", "response"):
        if name in names:
            t = schema.field(name).type
            c.check(is_string(t), f"{where}.{name}: expected string, got {describe(t)}")
    if "extra_info" in names:
        check_extra_info(c, f"{where}.extra_info", schema.field("extra_info").type)


def check_messages_schema(c: Checks, where: str, schema: pa.Schema) -> None:
    names = set(schema.names)
    for name in ("id", "messages"):
        c.check(name in names, f"{where}: missing column `{name}` (has {sorted(names)})")
    if "id" in names:
        c.check(is_string(schema.field("id").type), f"{where}.id: expected string")
    if "messages" in names:
        check_message_list(c, f"{where}.messages", schema.field("messages").type)


SCHEMA_CHECKS = {
    "verl-rl": check_verl_rl_schema,
    "verl-sft": check_verl_sft_schema,
    "messages": check_messages_schema,
}


# ------------------------------------------------------------------------------------------------ row checks


def roles_ok(roles: list[str], with_assistant: bool) -> bool:
    """(system?, user) for a prompt, (system?, user, assistant) for a conversation."""
    body = roles[1:] if roles and roles[0] == "system" else roles
    return body == (["user", "assistant"] if with_assistant else ["user"])


def check_conversation(c: Checks, where: str, messages: list[dict], with_assistant: bool) -> None:
    roles = [m.get("role") for m in messages]
    expected = "(system?, user, assistant)" if with_assistant else "(system?, user)"
    c.check(roles_ok(roles, with_assistant), f"{where}: roles {roles}, expected {expected}")
    for m in messages:
        if m.get("role") != "system":
            c.check(bool(m.get("content")), f"{where}: empty {m.get('role')} message")


def check_verl_rl_rows(c: Checks, fmt: str, split: str, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        where = f"{fmt}/{split}[{i}]"
        check_conversation(c, f"{where}.prompt", row["prompt"], with_assistant=False)
        c.check(row["reward_model"]["style"] == "rule", f"{where}.reward_model.style: {row['reward_model']['style']!r}")
        c.check(
            isinstance(row["reward_model"]["ground_truth"], str) and row["reward_model"]["ground_truth"] != "",
            f"{where}.reward_model.ground_truth is empty",
        )
        c.check(bool(row["data_source"]), f"{where}.data_source is empty")
        c.check(row["extra_info"]["split"] == split, f"{where}.extra_info.split is {row['extra_info']['split']!r}")
        c.check(bool(row["extra_info"]["id"]), f"{where}.extra_info.id is empty")


def check_verl_sft_rows(c: Checks, fmt: str, split: str, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        where = f"{fmt}/{split}[{i}]"
        messages = row["messages"]
        check_conversation(c, f"{where}.messages", messages, with_assistant=True)
        by_role = {m["role"]: m["content"] for m in messages}
        c.check(row["prompt"] == by_role.get("user"), f"{where}: `prompt` is not the user message")
        c.check(row["response"] == by_role.get("assistant"), f"{where}: `response` is not the assistant message")
        c.check(row["extra_info"]["split"] == split, f"{where}.extra_info.split is {row['extra_info']['split']!r}")


def check_messages_rows(c: Checks, fmt: str, split: str, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        check_conversation(c, f"{fmt}/{split}[{i}].messages", row["messages"], with_assistant=True)
        c.check(bool(row["id"]), f"{fmt}/{split}[{i}].id is empty")


def check_alpaca_rows(c: Checks, fmt: str, split: str, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        where = f"{fmt}/{split}[{i}]"
        # instruction, input, output; `system` (LLaMA-Factory's alpaca) when the export has a system message.
        c.check(
            {"input", "instruction", "output"} <= set(row) <= {"input", "instruction", "output", "system"},
            f"{where}: keys {sorted(row)}, expected instruction, input, output (and system)",
        )
        c.check(bool(row.get("instruction")), f"{where}.instruction is empty")
        c.check(row.get("input") == "", f"{where}.input is {row.get('input')!r}, expected ''")
        c.check(bool(row.get("output")), f"{where}.output is empty")


def check_sharegpt_rows(c: Checks, fmt: str, split: str, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        where = f"{fmt}/{split}[{i}]"
        c.check(list(row) == ["conversations"], f"{where}: keys {sorted(row)}, expected only conversations")
        turns = row.get("conversations") or []
        for turn in turns:
            c.check(sorted(turn) == ["from", "value"], f"{where}: turn keys {sorted(turn)}")
        senders = [t.get("from") for t in turns]
        body = senders[1:] if senders and senders[0] == "system" else senders
        c.check(body == ["human", "gpt"], f"{where}: senders {senders}, expected (system?, human, gpt)")


ROW_CHECKS = {
    "verl-rl": check_verl_rl_rows,
    "verl-sft": check_verl_sft_rows,
    "messages": check_messages_rows,
    "alpaca": check_alpaca_rows,
    "sharegpt": check_sharegpt_rows,
}


def row_ids(fmt: str, rows: list[dict]) -> list[str] | None:
    """The ids of a split's rows, for the formats that carry them."""
    if fmt in ("verl-rl", "verl-sft"):
        return [r["extra_info"]["id"] for r in rows]
    if fmt == "messages" or (fmt == "jsonl" and rows and "id" in rows[0]):
        return [r["id"] for r in rows]
    return None


def user_texts(fmt: str, rows: list[dict]) -> list[str] | None:
    """The user turns of a split's rows, for comparing formats without ids."""
    if fmt == "verl-sft":
        return sorted(r["prompt"] for r in rows)
    if fmt == "messages":
        return sorted(m["content"] for r in rows for m in r["messages"] if m["role"] == "user")
    if fmt == "alpaca":
        return sorted(r["instruction"] for r in rows)
    if fmt == "sharegpt":
        return sorted(t["value"] for r in rows for t in r["conversations"] if t["from"] == "human")
    return None


def compare_formats(c: Checks, loaded: dict[str, dict[str, list[dict]]]) -> None:
    """Every format holds the same rows in the same splits: counts, ids where there are ids, user turns."""
    counts = {fmt: {s: len(r) for s, r in splits.items()} for fmt, splits in loaded.items()}
    if counts:
        reference_fmt, reference = next(iter(counts.items()))
        for fmt, split_counts in counts.items():
            c.check(
                split_counts == reference,
                f"row counts differ: {fmt} {split_counts} vs {reference_fmt} {reference}",
            )
    ids = {fmt: {s: sorted(row_ids(fmt, r) or []) for s, r in splits.items()} for fmt, splits in loaded.items()}
    ids = {fmt: by_split for fmt, by_split in ids.items() if any(by_split.values())}
    if ids:
        reference_fmt, reference = next(iter(ids.items()))
        all_ids = [i for by_split in reference.values() for i in by_split]
        c.check(len(all_ids) == len(set(all_ids)), f"{reference_fmt}: an id appears in more than one row or split")
        for fmt, by_split in ids.items():
            c.check(by_split == reference, f"{fmt} puts other ids in its splits than {reference_fmt}")
    texts = {fmt: {s: user_texts(fmt, r) for s, r in splits.items()} for fmt, splits in loaded.items()}
    texts = {fmt: by_split for fmt, by_split in texts.items() if all(v is not None for v in by_split.values())}
    if texts:
        reference_fmt, reference = next(iter(texts.items()))
        for fmt, by_split in texts.items():
            c.check(by_split == reference, f"{fmt} holds other user turns per split than {reference_fmt}")


def check_system(c: Checks, loaded: dict[str, dict[str, list[dict]]], system: str) -> None:
    """Every conversation starts with the export's system message."""
    firsts = {
        "verl-rl": lambda row: (row["prompt"][0]["role"], row["prompt"][0]["content"]),
        "verl-sft": lambda row: (row["messages"][0]["role"], row["messages"][0]["content"]),
        "messages": lambda row: (row["messages"][0]["role"], row["messages"][0]["content"]),
        "sharegpt": lambda row: (row["conversations"][0]["from"], row["conversations"][0]["value"]),
        "alpaca": lambda row: ("system", row.get("system")),
    }
    for fmt, first in firsts.items():
        for split, rows in loaded.get(fmt, {}).items():
            for i, row in enumerate(rows):
                role, content = first(row)
                c.check(
                    role == "system" and content == system,
                    f"{fmt}/{split}[{i}]: starts with {role} {content!r}, not the system message",
                )


# ----------------------------------------------------------------------------------------------- the card


def read_card(export_dir: pathlib.Path, c: Checks) -> dict:
    card = export_dir / "README.md"
    if not c.check(card.is_file(), f"{card} is missing (the dataset card `load_dataset` reads configs from)"):
        return {}
    text = card.read_text(encoding="utf-8")
    if not c.check(text.startswith("---\n"), "README.md does not start with YAML front matter"):
        return {}
    front = text[4:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError as error:
        c.check(False, f"README.md front matter is not YAML: {error}")
        return {}
    return meta


def config_file_types(entry: dict) -> set[str]:
    """The file extensions a card config's data_files name."""
    files = entry.get("data_files") or []
    if isinstance(files, (str, dict)):
        files = [files]
    paths = []
    for item in files:
        path = item.get("path") if isinstance(item, dict) else item
        paths.extend(path if isinstance(path, list) else [path])
    return {str(path).rsplit(".", 1)[-1] for path in paths if path}


def data_files_on_disk(export_dir: pathlib.Path, fmt: str) -> dict[str, pathlib.Path]:
    ext = "parquet" if fmt in PARQUET_FORMATS else "jsonl"
    folder = export_dir / fmt
    return {p.name[: -len(ext) - 1]: p for p in sorted(folder.glob(f"*.{ext}"))}


# ----------------------------------------------------------------------------------------------- templates


def render_checks(c: Checks, tokenizer, fmt: str, split: str, conversations: list[list[dict]], generation: bool):
    """Renders each conversation with the tokenizer's chat template; returns the first rendering."""
    first = None
    for i, messages in enumerate(conversations):
        where = f"{fmt}/{split}[{i}] chat template"
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation)
            encoded = tokenizer.apply_chat_template(plain, tokenize=True, add_generation_prompt=generation)
        except Exception as error:  # a template error is a failure of the data, not of this script
            c.check(False, f"{where}: {type(error).__name__}: {error}")
            continue
        position = 0
        for m in plain:
            found = text.find(m["content"], position)
            if not c.check(found >= 0, f"{where}: {m['role']} content not found in order in {text!r}"):
                break
            position = found + len(m["content"])
        c.check(text.count("<|im_start|>") >= len(plain), f"{where}: fewer turns than messages in {text!r}")
        if generation:
            c.check(text.endswith("<|im_start|>assistant\n"), f"{where}: no generation prompt at the end")
        ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
        start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        c.check(
            list(ids).count(start) == text.count("<|im_start|>"),
            f"{where}: <|im_start|> is not one special token per turn",
        )
        if first is None:
            first = text
    return first


def check_reward(c: Checks, path: pathlib.Path, verl_rl: dict[str, list[dict]], verl_sft: dict[str, list[dict]]):
    """Runs a verl reward file the way verl's reward manager calls it, on every verl-rl row: the ground
    truth after `####` scores 1, a wrong answer 0. Returns a summary line, with how sdg's own responses score."""
    spec = importlib.util.spec_from_file_location("sdg_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gold = total = 0
    for split, rows in sorted(verl_rl.items()):
        for i, row in enumerate(rows):
            truth = row["reward_model"]["ground_truth"]
            kwargs = {"data_source": row["data_source"], "ground_truth": truth, "extra_info": row["extra_info"]}
            right = module.compute_score(solution_str=f"Let me think.\n#### {truth}", **kwargs)
            wrong = module.compute_score(solution_str=f"Let me think.\n#### {truth} and 17 more", **kwargs)
            c.check(float(right) == 1.0, f"verl-rl/{split}[{i}]: the ground truth {truth!r} scores {right}")
            c.check(float(wrong) == 0.0, f"verl-rl/{split}[{i}]: a wrong answer scores {wrong}")
            total += 1
    truths = {r["extra_info"]["id"]: r["reward_model"]["ground_truth"] for rows in verl_rl.values() for r in rows}
    for rows in verl_sft.values():
        for row in rows:
            truth = truths.get(row["extra_info"]["id"])
            if truth is not None:
                gold += float(module.compute_score(row.get("data_source", "sdg"), row["response"], truth)) == 1.0
    return f"  {path.name}: ground truth scores 1 and a wrong answer 0 on {total} rows; sdg's responses score 1 on {gold}/{total}"


# ------------------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=pathlib.Path)
    parser.add_argument("--tokenizer", type=pathlib.Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--format", dest="formats", action="append", choices=ALL_FORMATS)
    parser.add_argument("--reward", type=pathlib.Path, help="a verl reward file (compute_score) to run on verl-rl")
    parser.add_argument("--system", help="the system message every conversation must start with (sdg export --system)")
    args = parser.parse_args()
    export_dir: pathlib.Path = args.export_dir.resolve()
    formats = args.formats or ALL_FORMATS
    c = Checks()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    c.check(bool(getattr(tokenizer, "chat_template", None)), f"{args.tokenizer} has no chat template")

    meta = read_card(export_dir, c)
    configs = {entry.get("config_name"): entry for entry in meta.get("configs") or []}
    kinds = {name: config_file_types(entry) for name, entry in configs.items()}
    c.check(
        len(set().union(*kinds.values())) <= 1,
        f"README.md: the configs mix file types {kinds}; datasets reads all the configs of a folder with the "
        "builder of the first one's files, so a card can serve one file type only (the Parquet formats)",
    )

    loaded: dict[str, dict[str, list[dict]]] = {}
    summary: list[str] = []
    samples: list[str] = []
    cache = tempfile.mkdtemp(prefix="sdg-interop-hf-cache-")
    for fmt in formats:
        try:
            on_disk = data_files_on_disk(export_dir, fmt)
            c.check(bool(on_disk), f"{fmt}: no data files under {export_dir / fmt}")
            for split in on_disk:
                c.check(split in SPLITS, f"{fmt}: split file {on_disk[split].name} is not one of {SPLITS}")

            # The client every Hugging Face user has. `datasets` picks one builder (Parquet or JSON) for all the
            # configs of a folder, from the first config's files, so the card can only serve the Parquet
            # formats; every format's own folder loads on its own, its splits named by its file names.
            folder = datasets.load_dataset(str(export_dir / fmt), cache_dir=cache)
            c.check(
                sorted(folder) == sorted(on_disk),
                f"{fmt}: load_dataset({fmt}/) splits {sorted(folder)} differ from the files {sorted(on_disk)}",
            )
            dataset = folder
            if fmt in configs:
                builder = datasets.load_dataset_builder(str(export_dir), fmt, cache_dir=cache)
                c.check(builder.info.features is not None, f"{fmt}: the card's dataset_info declares no features")
                try:
                    dataset = datasets.load_dataset(str(export_dir), fmt, cache_dir=cache)
                except Exception as error:
                    cause = error.__cause__ or error.__context__
                    hint = (
                        ". datasets reads every config of a folder with the builder of the first config's files, so "
                        "the card's configs: must list the Parquet formats only (JSONL formats load from their folder)"
                        if fmt in JSONL_FORMATS
                        else ""
                    )
                    c.check(
                        False,
                        f"{fmt}: load_dataset(EXPORT_DIR, {fmt!r}) fails: {type(error).__name__}: {error}"
                        + (f" ({type(cause).__name__}: {cause})" if cause else "")
                        + hint,
                    )
                c.check(
                    sorted(dataset) == sorted(on_disk),
                    f"{fmt}: load_dataset(EXPORT_DIR, {fmt!r}) splits {sorted(dataset)} differ from the files {sorted(on_disk)}",
                )
                for split in set(dataset) & set(folder):
                    c.check(
                        dataset[split].num_rows == folder[split].num_rows,
                        f"{fmt}/{split}: the card's config and the folder load different row counts",
                    )
            else:
                c.check(fmt not in PARQUET_FORMATS, f"{fmt}: the dataset card's configs: has no config_name {fmt}")
            for split in dataset:
                c.check(split in SPLITS, f"{fmt}: load_dataset split {split!r} is not one of {SPLITS}")
                c.check(dataset[split].num_rows > 0, f"{fmt}/{split} is empty (empty splits must not be written)")

            if fmt in SCHEMA_CHECKS:
                for split, path in on_disk.items():
                    table = pq.read_table(path)
                    SCHEMA_CHECKS[fmt](c, f"{fmt}/{split}.parquet (pyarrow)", table.schema)
                    if split in dataset:
                        # What `datasets` hands a trainer after applying the card's features.
                        SCHEMA_CHECKS[fmt](c, f"{fmt}/{split} (datasets)", dataset[split].data.table.schema)
                        c.check(
                            table.num_rows == dataset[split].num_rows,
                            f"{fmt}/{split}: pyarrow reads {table.num_rows} rows, datasets {dataset[split].num_rows}",
                        )

            loaded[fmt] = {split: dataset[split].to_list() for split in dataset}
            for split, rows in loaded[fmt].items():
                if fmt in ROW_CHECKS:
                    ROW_CHECKS[fmt](c, fmt, split, rows)
            counts = ", ".join(f"{split} {len(rows)}" for split, rows in sorted(loaded[fmt].items()))
            names = dataset[next(iter(dataset))].column_names
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} columns)" if len(names) > 6 else "")
            summary.append(f"  {fmt:<9} {counts}  ({shown})")
        except Exception as error:
            c.check(False, f"{fmt}: {type(error).__name__}: {error}\n{traceback.format_exc()}")

    # Every format holds the same rows in the same splits.
    if args.system is not None:
        check_system(c, loaded, args.system)
    try:
        compare_formats(c, loaded)
    except Exception as error:
        c.check(False, f"comparing formats: {type(error).__name__}: {error}")

    # A real chat template over the conversations, as TRL and verl apply it.
    renderings = (("messages", "messages", False), ("verl-sft", "messages", False), ("verl-rl", "prompt", True))
    for fmt, key, generation in renderings:
        for split, rows in sorted(loaded.get(fmt, {}).items()):
            try:
                text = render_checks(c, tokenizer, fmt, split, [r[key] for r in rows], generation)
            except Exception as error:  # e.g. a column that is not a list of messages at all
                c.check(False, f"{fmt}/{split}: cannot render `{key}`: {type(error).__name__}: {error}")
                continue
            if text is not None and fmt != "verl-sft" and not any(s.startswith(f"  {fmt}/") for s in samples):
                samples.append(f"  {fmt}/{split}[0] rendered:\n    " + text.strip().replace("\n", "\n    "))

    shutil.rmtree(cache, ignore_errors=True)
    reward_line = None
    if args.reward is not None and "verl-rl" in loaded:
        try:
            reward_line = check_reward(c, args.reward, loaded["verl-rl"], loaded.get("verl-sft", {}))
        except Exception as error:
            c.check(False, f"{args.reward}: {type(error).__name__}: {error}")

    print(f"sdg export at {export_dir}")
    print(f"  pyarrow {pa.__version__}, datasets {datasets.__version__}, tokenizer {args.tokenizer}")
    print("\n".join(summary))
    print("\n".join(samples))
    if reward_line:
        print(reward_line)
    if c.failures:
        print(f"FAILED: {len(c.failures)} of {len(c.failures) + c.passed} checks", file=sys.stderr)
        # The same failure on many rows is shown once, with the count: `verl-rl/train[*]: ... (29 rows)`.
        grouped: dict[str, int] = {}
        for failure in c.failures:
            key = re.sub(r"\[\d+\]", "[*]", failure)
            grouped[key] = grouped.get(key, 0) + 1
        for failure, count in list(grouped.items())[:40]:
            print(f"  - {failure}" + (f" ({count} rows)" if count > 1 else ""), file=sys.stderr)
        if len(grouped) > 40:
            print(f"  ... and {len(grouped) - 40} more", file=sys.stderr)
        return 1
    print(f"ok: {c.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

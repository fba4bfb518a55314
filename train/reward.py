"""Rule reward for verl on sdg's verl-rl export: 1.0 when the model's final answer matches the ground truth.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info)` once per sampled response
(set `custom_reward_function.path=train/reward.py custom_reward_function.name=compute_score`).
`ground_truth` is the row's `reward_model.ground_truth`, i.e. sdg's `answer` column.

The final answer is found the way sdg's `vote` and `score` operators find it by default: the last
`<answer>...</answer>`, else the rest of the line after the last `####`, else the last `\\boxed{...}`, else
the last number. Answers are compared after light normalization (case, spaces, `$`, thousands commas, a
trailing period); two numbers are equal within a relative 1e-6.

No dependencies beyond the standard library, so it runs in any verl reward worker.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?")
_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def _boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    open_brace = text.index("{", start)
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
    return None  # truncated: the braces never close


def extract_answer(text: str) -> str | None:
    """The final answer in a model response, or None when there is none."""
    candidates = []
    tags = _TAG.findall(text)
    candidates.append(tags[-1] if tags else None)
    if "####" in text:
        candidates.append(text[text.rfind("####") + 4 :].split("\n", 1)[0])
    candidates.append(_boxed(text))
    numbers = _NUMBER.findall(text)
    candidates.append(numbers[-1] if numbers else None)
    for candidate in candidates:
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return None


def _number(text: str) -> float | None:
    text = text.replace(",", "")
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer: str) -> tuple[str, float | None]:
    """Canonical text of an answer and its value when it is a number."""
    text = " ".join(answer.strip().lower().split())
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = text.rstrip(".").strip()
    return text, _number(text)


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    answer = extract_answer(solution_str or "")
    if answer is None or ground_truth is None:
        return 0.0
    got, got_number = normalize(answer)
    want, want_number = normalize(str(ground_truth))
    if got_number is not None and want_number is not None:
        return 1.0 if abs(got_number - want_number) <= 1e-6 * max(1.0, abs(got_number), abs(want_number)) else 0.0
    return 1.0 if got == want else 0.0

"""Question files in Spec-Bench's JSONL format: loading, validation, task groups, selection.

One JSON object a line: `question_id` (an integer or a string), `category` (a non-empty string)
and `turns` (a non-empty list of strings); other fields (Spec-Bench's `reference`) are ignored.
Only the first turn of each question is used: the benchmark measures decoding speed, and a
second turn would need the model's own first answer in the prompt, which differs between models.

Task groups follow Spec-Bench: the eight MT-Bench categories (writing, roleplay, reasoning, math,
coding, extraction, stem, humanities) form one group, `mt_bench`; every other category is a group
of its own (translation, summarization, qa, math_reasoning, rag). Groups keep the order in which
they first appear in the file.

Selection takes the first N questions of each group that fit the model's context, going round
the group's categories in turn (so `mt_bench` with N=8 gets one question of each MT-Bench
category rather than eight writing prompts); a group of one category simply takes its first N.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cas_spec.core.errors import UserError

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
MT_BENCH = "mt_bench"
SHIPPED = {"spec_bench": "spec_bench_question.jsonl", "mt_bench": "mt_bench_question.jsonl"}
DEFAULT = "spec_bench"


class QuestionFileError(UserError):
    """A question file that cannot be read or does not follow the format."""


class GroupError(UserError):
    """An unknown task group asked for, or a group with no usable question."""


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    prompt: str  # the first turn
    line: int  # line number in the file, from 1

    @property
    def group(self) -> str:
        return group_of(self.category)


def group_of(category: str) -> str:
    """`mt_bench` for the eight MT-Bench categories, the category itself otherwise."""
    return MT_BENCH if category in MT_BENCH_CATEGORIES else category


def resolve_path(source: str | Path | None) -> tuple[str, str]:
    """(label, text) of a question file: None or a shipped name (`spec_bench`, `mt_bench`), or a path.

    An existing path wins over a shipped name of the same spelling.
    """
    if source is None:
        source = DEFAULT
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return str(path), path.read_text(encoding="utf-8-sig")  # a leading BOM is not JSON
        except (OSError, UnicodeDecodeError) as exc:
            raise QuestionFileError(f"cannot read question file '{path}': {exc}") from None
    if str(source) in SHIPPED:
        name = SHIPPED[str(source)]
        return f"{source} (shipped {name})", resources.files(__package__).joinpath(name).read_text("utf-8")
    if path.exists():
        raise QuestionFileError(f"question file '{path}' is not a file")
    raise QuestionFileError(f"no question file '{source}'; shipped: {', '.join(SHIPPED)}")


def parse_questions(text: str, label: str = "<questions>") -> list[Question]:
    """Every question of a JSONL text; the first problem raises, naming the line and the field.

    Lines end at '\n' only (a '\r' before it is JSON whitespace): `str.splitlines` would also
    split at characters a JSON string may hold raw, such as U+2028, and miscount the lines.
    """
    questions: list[Question] = []
    seen: dict[int | str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"{label} line {number}"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"{where}: bad JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, dict):
            raise QuestionFileError(f"{where}: expected a JSON object, got {_type(data)}")
        for field in ("question_id", "category", "turns"):
            if field not in data:
                raise QuestionFileError(f"{where}: field '{field}' is missing")
        qid, category, turns = data["question_id"], data["category"], data["turns"]
        if isinstance(qid, bool) or not isinstance(qid, int | str):
            raise QuestionFileError(f"{where}: field 'question_id' must be an integer or a string, got {_type(qid)}")
        if not isinstance(category, str) or not category.strip():
            raise QuestionFileError(f"{where}: field 'category' must be a non-empty string, got {_type(category)}")
        if not isinstance(turns, list):
            raise QuestionFileError(f"{where}: field 'turns' must be a list of strings, got {_type(turns)}")
        if not turns:
            raise QuestionFileError(f"{where}: field 'turns' is empty")
        for i, turn in enumerate(turns):
            if not isinstance(turn, str):
                raise QuestionFileError(f"{where}: field 'turns.{i}' must be a string, got {_type(turn)}")
        if not turns[0].strip():
            raise QuestionFileError(f"{where}: field 'turns.0' is blank")
        if qid in seen:
            raise QuestionFileError(f"{where}: field 'question_id' {qid!r} repeats line {seen[qid]}")
        seen[qid] = number
        questions.append(Question(question_id=qid, category=category, prompt=turns[0], line=number))
    if not questions:
        raise QuestionFileError(f"{label}: no questions")
    return questions


def load_questions(source: str | Path | None = None) -> tuple[str, list[Question]]:
    """(label, questions) of a shipped question file or a path (see `resolve_path`)."""
    label, text = resolve_path(source)
    return label, parse_questions(text, label)


def group_questions(questions: Sequence[Question]) -> dict[str, list[Question]]:
    """Questions by task group, groups in order of first appearance."""
    groups: dict[str, list[Question]] = {}
    for question in questions:
        groups.setdefault(question.group, []).append(question)
    return groups


def parse_groups(text: str | None, available: Sequence[str]) -> list[str]:
    """The groups named in a comma list (all groups when None), checked against `available`."""
    if text is None:
        return list(available)
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise GroupError(f"--groups '{text}': empty group name")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise GroupError(
            f"unknown group{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}; "
            f"this question file has: {', '.join(available)}"
        )
    return list(dict.fromkeys(names))


def select(
    groups: dict[str, list[Question]],
    names: Sequence[str],
    per_group: int,
    fits: Callable[[Question], bool] = lambda q: True,
) -> tuple[list[Question], list[Question]]:
    """(chosen, skipped): up to `per_group` questions a group, round the group's categories in turn.

    `skipped` holds the questions passed over because `fits` rejected them (too long for the
    model's context). Groups left with no question are dropped from `chosen`.
    """
    chosen: list[Question] = []
    skipped: list[Question] = []
    for name in names:
        by_category: dict[str, list[Question]] = {}
        for question in groups[name]:
            by_category.setdefault(question.category, []).append(question)
        queues = [list(reversed(qs)) for qs in by_category.values()]
        taken = 0
        while taken < per_group and any(queues):
            for queue in queues:
                if taken >= per_group or not queue:
                    continue
                question = queue.pop()
                if fits(question):
                    chosen.append(question)
                    taken += 1
                else:
                    skipped.append(question)
    return chosen, skipped


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__

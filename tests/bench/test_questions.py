"""Question files: the shipped ones, task groups, selection, and errors naming line and field."""

from __future__ import annotations

import json

import pytest

from cas_spec.core.errors import UserError
from cas_spec.data.questions import (
    MT_BENCH_CATEGORIES,
    GroupError,
    Question,
    QuestionFileError,
    group_of,
    group_questions,
    load_questions,
    parse_groups,
    parse_questions,
    select,
)

SPEC_BENCH_GROUPS = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]


def line(qid=1, category="qa", turns=("What is 2 + 2?",), **extra) -> str:
    return json.dumps({"question_id": qid, "category": category, "turns": list(turns), **extra})


def test_shipped_spec_bench_file_has_six_groups_of_eighty():
    label, questions = load_questions()  # the default
    assert "spec_bench" in label and len(questions) == 480
    groups = group_questions(questions)
    assert list(groups) == SPEC_BENCH_GROUPS
    assert {name: len(qs) for name, qs in groups.items()} == dict.fromkeys(SPEC_BENCH_GROUPS, 80)
    assert {q.category for q in groups["mt_bench"]} == set(MT_BENCH_CATEGORIES)
    assert questions[0].prompt.startswith("Compose an engaging travel blog post")  # the first turn only


def test_shipped_mt_bench_file_is_one_group():
    _label, questions = load_questions("mt_bench")
    assert len(questions) == 80 and list(group_questions(questions)) == ["mt_bench"]


@pytest.mark.parametrize(
    "category,group",
    [
        ("writing", "mt_bench"),
        ("humanities", "mt_bench"),
        ("math", "mt_bench"),
        ("math_reasoning", "math_reasoning"),
        ("my_task", "my_task"),
    ],
)
def test_group_of(category, group):
    assert group_of(category) == group


def test_a_file_of_my_own_with_extra_fields_and_blank_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join([line(1, "qa", reference=["4"]), "", line("b", "poetry", ["Write.", "Again."])]) + "\n")
    label, questions = load_questions(str(path))
    assert label == str(path)
    assert questions == [Question(1, "qa", "What is 2 + 2?", 1), Question("b", "poetry", "Write.", 3)]
    assert list(group_questions(questions)) == ["qa", "poetry"]


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ('{"question_id": 1, "category": "qa", "turns": ["x"]', "bad JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"category": "qa", "turns": ["x"]}', "field 'question_id' is missing"),
        ('{"question_id": 7, "turns": ["x"]}', "field 'category' is missing"),
        ('{"question_id": 7, "category": "qa"}', "field 'turns' is missing"),
        (line(True), "field 'question_id' must be an integer or a string, got bool"),
        (line(7.5), "field 'question_id' must be an integer or a string, got float"),
        (line(7, category=3), "field 'category' must be a non-empty string, got int"),
        (line(7, category=" "), "field 'category' must be a non-empty string"),
        ('{"question_id": 7, "category": "qa", "turns": "x"}', "field 'turns' must be a list of strings, got str"),
        (line(7, turns=()), "field 'turns' is empty"),
        (line(7, turns=("x", None)), "field 'turns.1' must be a string, got null"),
        (line(7, turns=("  ",)), "field 'turns.0' is blank"),
        (line(1), "field 'question_id' 1 repeats line 1"),
    ],
)
def test_a_malformed_line_names_its_number_and_field(tmp_path, bad, fragment):
    path = tmp_path / "q.jsonl"
    path.write_text(line(1) + "\n\n" + bad + "\n" + line(99) + "\n")
    with pytest.raises(QuestionFileError) as info:
        load_questions(path)
    assert isinstance(info.value, UserError)
    assert f"{path} line 3: " in str(info.value)
    assert fragment in str(info.value)


def test_an_empty_file_and_a_missing_file(tmp_path):
    with pytest.raises(QuestionFileError, match="no questions"):
        parse_questions("\n\n", "empty.jsonl")
    with pytest.raises(QuestionFileError, match="no question file .*nope.jsonl.*; shipped: spec_bench, mt_bench"):
        load_questions(tmp_path / "nope.jsonl")


def test_groups_are_checked_against_the_file():
    available = SPEC_BENCH_GROUPS
    assert parse_groups(None, available) == available
    assert parse_groups("qa, rag,qa", available) == ["qa", "rag"]
    with pytest.raises(GroupError, match=r"unknown group 'writing'; this question file has: mt_bench, translation"):
        parse_groups("qa,writing", available)
    with pytest.raises(GroupError, match="empty group name"):
        parse_groups("qa,,rag", available)


def test_selection_goes_round_the_categories_of_a_group():
    _, questions = load_questions()
    groups = group_questions(questions)
    chosen, skipped = select(groups, ["mt_bench", "qa"], 8)
    mt = [q for q in chosen if q.group == "mt_bench"]
    assert [q.category for q in mt] == list(MT_BENCH_CATEGORIES)  # one of each, not eight writing prompts
    assert [q.question_id for q in chosen if q.group == "qa"] == list(range(321, 329))  # the first eight
    assert skipped == []


def test_selection_passes_over_questions_that_do_not_fit():
    _, questions = load_questions()
    groups = group_questions(questions)
    chosen, skipped = select(groups, ["translation", "rag"], 2, fits=lambda q: q.question_id % 2 == 0)
    assert [q.question_id for q in chosen] == [162, 164, 482, 484]
    assert [q.question_id for q in skipped] == [161, 163, 481, 483]
    chosen, skipped = select(groups, ["rag"], 2, fits=lambda q: False)
    assert chosen == [] and len(skipped) == 80


def test_line_numbers_count_newlines_only(tmp_path):
    """A JSON string may hold U+2028, form feeds and other characters str.splitlines breaks at;
    they neither split a question nor shift the line number of a later error."""
    path = tmp_path / "q.jsonl"
    odd = "first\u2028second\x0cthird\x1cfourth\x85fifth"
    first = json.dumps({"question_id": 1, "category": "qa", "turns": [odd]}, ensure_ascii=False)
    path.write_bytes(f"{first}\r\n{line(2)}\r\n".encode() + b'{"question_id": 3, "category": "qa"}\r\n')
    with pytest.raises(QuestionFileError, match=f"^{path} line 3: field 'turns' is missing$"):
        load_questions(path)
    path.write_bytes(f"{first}\r\n{line(2)}\r\n".encode())
    _, questions = load_questions(path)
    assert [q.prompt for q in questions] == [odd, "What is 2 + 2?"] and [q.line for q in questions] == [1, 2]


def test_a_file_saved_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(line(1) + "\n" + line(2) + "\n", encoding="utf-8-sig")
    _, questions = load_questions(path)
    assert [q.question_id for q in questions] == [1, 2]


def test_bad_json_reports_line_and_column(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(line(1) + "\n" + line(2) + "\n" + '{"question_id": 3, "category": qa, "turns": ["x"]}\n')
    with pytest.raises(QuestionFileError) as info:
        load_questions(path)
    assert str(info.value) == f"{path} line 3: bad JSON: Expecting value (column 32)"

"""A batch input file's validation (worker/batch/validation.py) alone: lines in, errors and a total out.

No Redis, no processes: the end-to-end view of the same errors is in tests/test_batches.py.
"""

from __future__ import annotations

import tracemalloc

import orjson

from shared.catalog import BUNDLED_CATALOG, load_catalog
from worker.batch.validation import MAX_ERRORS, LineRules, LineValidator, check_file, validate_lines

URL = "/v1/chat/completions"
RULES = LineRules(endpoint=URL, models=load_catalog(BUNDLED_CATALOG).models, max_lines=50_000,
                  max_line_bytes=1024 * 1024, max_messages=2048)


def line(i: int | str, content: str = "Hello", model: str = "gemini", **extra) -> bytes:
    custom_id = i if isinstance(i, str) else f"req-{i}"
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": URL,
                         "body": {"model": model, "messages": [{"role": "user", "content": content}]}, **extra})


def test_good_lines_pass_and_blank_lines_are_not_requests():
    result = validate_lines([line(1), b"", line(2), b"   ", line(3)], RULES)
    assert result.ok and result.errors == [] and result.total == 3


def test_each_bad_line_is_named_by_its_number_and_param():
    lines = [
        line(1),
        b'{"custom_id": "broken", "method": "POST",',
        line(3, model="no-such-model"),
        line(1),  # custom_id req-1 again
        orjson.dumps({**orjson.loads(line(5)), "url": "/v1/embeddings"}),
        line(6, "x" * (1024 * 1024 + 10)),
        orjson.dumps({**orjson.loads(line(7)), "body": {"model": "gemini", "messages": [{"role": "user",
                                                                                         "content": 5}]}}),
        orjson.dumps({**orjson.loads(line(8)), "method": "GET"}),
        orjson.dumps({"method": "POST", "url": URL, "body": {}}),
        b"[1, 2]",
        orjson.dumps({**orjson.loads(line(11)), "body": "hello"}),
    ]
    result = validate_lines(lines, RULES)
    assert not result.ok and result.total == 11
    found: dict[int, list[tuple[str, str | None]]] = {}
    for e in result.errors:
        found.setdefault(e.line, []).append((e.code, e.param))
    assert found == {
        2: [("invalid_json", None)],
        3: [("model_not_found", "body.model")],
        4: [("duplicate_custom_id", "custom_id")],
        5: [("invalid_url", "url")],
        6: [("line_too_large", None)],
        7: [("invalid_value", "body.messages[0].content")],
        8: [("invalid_method", "method")],
        9: [("missing_custom_id", "custom_id"), ("missing_required_parameter", "body.model")],
        10: [("invalid_json", None)],
        11: [("invalid_body", "body")],
    }
    assert [e.line for e in result.errors] == sorted(e.line for e in result.errors)
    assert result.errors_object()["object"] == "list"
    assert result.errors_object()["data"][0] == {"code": "invalid_json", "param": None, "line": 2,
                                                 "message": "Line 2 is not valid JSON."}


def test_an_empty_file_and_a_missing_or_oversized_file_fail():
    empty = validate_lines([b"", b"  "], RULES)
    assert [(e.code, e.param) for e in empty.errors] == [("empty_file", "input_file_id")] and empty.total == 0
    assert check_file(None, 100).code == "file_not_found"
    assert check_file({"bytes": "101"}, 100).code == "file_too_large"
    assert check_file({"bytes": "100"}, 100) is None


def test_too_many_lines_stops_reading():
    rules = LineRules(URL, RULES.models, max_lines=3, max_line_bytes=RULES.max_line_bytes, max_messages=2048)
    validator = LineValidator(rules)
    fed = [validator.feed(i, line(i)) for i in range(5)]
    assert fed == [True, True, True, False, False]
    result = validator.result()
    assert [(e.code, e.line) for e in result.errors] == [("too_many_requests", 4)] and result.total == 4


def test_errors_are_capped_and_reading_stops_there():
    validator = LineValidator(RULES)
    read = 0
    for i in range(MAX_ERRORS * 3):
        read += 1
        if not validator.feed(i, b"not json"):
            break
    assert read == MAX_ERRORS and len(validator.result().errors) == MAX_ERRORS


def test_duplicates_are_found_across_pages_with_bounded_memory():
    """Fed a page at a time as the worker does; 20,000 ids of 2 KB each (40 MB if kept) cost a few MB."""
    tracemalloc.start()
    try:
        validator = LineValidator(RULES)
        for page in range(40):
            for i in range(page * 500, page * 500 + 500):
                validator.feed(i, line(f"{i:08d}" + "x" * 2048))
        validator.feed(20_000, line(f"{123:08d}" + "x" * 2048))  # a duplicate of line 124, 40 pages back
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = validator.result()
    assert [(e.code, e.line) for e in result.errors] == [("duplicate_custom_id", 20_001)]
    assert result.total == 20_001
    assert current < 8 * 1024 * 1024, f"{current / 1e6:.1f} MB kept after validation"

"""One row schema: the writer, the reader, data.csv and the docs all take their columns from `suite.results.schema`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from suite.case import CASE_FIELDS
from suite.results import schema
from suite.results.files import ResultsFormatError, ResultsWriter, read

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_results_docs", ROOT / "scripts" / "gen-results-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_column_tables_are_generated_from_the_schema():
    generator = _generator()
    assert generator.OUT.read_text(encoding="utf-8") == generator.render(), (
        "docs/results.md is stale: run `.venv/bin/python scripts/gen-results-docs.py`"
    )


def test_the_schema_declares_every_case_field_and_each_column_once():
    assert tuple(column.name for column in schema.CASE) == CASE_FIELDS
    names = [column.name for column in (*schema.ROW, *schema.FROM_HEADER)]
    assert len(names) == len(set(names))
    assert all(column.kind in schema.KINDS and column.meaning for column in (*schema.ROW, *schema.FROM_HEADER))


def _row(**fields) -> dict:
    return {
        "impl": "naive",
        "family": "exact",
        "batch": 1,
        "heads": 2,
        "seq_len": 8,
        "head_dim": 4,
        "dtype": "float32",
        "causal": False,
        "mode": "fwd",
        "device": "cpu",
        "kv_heads": None,
        "q_len": None,
        "status": "ok",
        "time_ms": 0.5,
        **fields,
    }


def test_the_writer_orders_columns_as_the_schema_does(tmp_path):
    writer = ResultsWriter(tmp_path / "r.jsonl", {"device": "cpu"}, {})
    writer.append(dict(reversed(_row(noisy=False, repeats=3).items())))
    writer.close()
    line = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[1])
    order = [column.name for column in schema.ROW]
    assert list(line) == sorted(line, key=order.index)


@pytest.mark.parametrize("extra", [{"tflop": 1.0}, {"repeats": "three"}, {"noisy": 1.5}])
def test_the_writer_refuses_a_column_the_schema_does_not_declare_or_a_wrong_type(tmp_path, extra):
    writer = ResultsWriter(tmp_path / "r.jsonl", {"device": "cpu"}, {})
    with pytest.raises(ValueError, match=next(iter(extra))):
        writer.append(_row(**extra))


@pytest.mark.parametrize("extra", [{"tflop": 1.0}, {"repeats": "three"}, {"noisy": 1.5}])
def test_the_reader_refuses_what_the_writer_would_not_write(tmp_path, extra):
    path = tmp_path / "r.jsonl"
    header = {"record": "run", "run_id": "a"}
    path.write_text("\n".join(json.dumps(r) for r in (header, {"record": "result", "run_id": "a", **_row(**extra)})))
    with pytest.raises(ResultsFormatError, match=f"r.jsonl:2: .*{next(iter(extra))}"):
        read(path)


def test_data_csv_takes_its_columns_from_the_schema():
    from suite.reporting import build

    assert build.DATA_COLUMNS == schema.DATA_COLUMNS
    assert set(schema.DATA_COLUMNS) <= {column.name for column in (*schema.ROW, *schema.FROM_HEADER)}

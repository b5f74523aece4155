"""Data-driven golden test: every case in `$MEMFLOW_GOLDEN_DIR/cases.json` runs from its settings alone.

One pytest item per case (its id contains the case id). A case whose kind has no runner fails: the
suite must never silently pass over data it cannot check. Runners live in golden_*.py next to this file.
"""

import json
import os
from pathlib import Path

import pytest

import golden_codecs
import golden_pipeline
import golden_tae
import golden_vace

RUNNERS = {}
RUNNERS.update(golden_pipeline.RUNNERS)
RUNNERS.update(golden_codecs.RUNNERS)
RUNNERS.update(golden_vace.RUNNERS)
RUNNERS.update(golden_tae.RUNNERS)

_GOLDEN = Path(os.environ.get("MEMFLOW_GOLDEN_DIR", Path(__file__).parent / "golden"))


def _load_index():
    index = json.loads((_GOLDEN / "cases.json").read_text())
    return index, index["cases"]


_INDEX, _CASES = _load_index()


@pytest.mark.parametrize("case", _CASES, ids=[f"{c['id']}-{c['kind']}" for c in _CASES])
def test_golden_case(case):
    runner = RUNNERS.get(case["kind"])
    assert runner is not None, f"case {case['id']}: no runner for kind {case['kind']!r}"
    runner(case, _INDEX, _GOLDEN)

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # golden helpers live next to the tests


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return Path(os.environ.get("MEMFLOW_GOLDEN_DIR", TESTS / "golden"))

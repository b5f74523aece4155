import os
import sys
from pathlib import Path

# One thread everywhere (also in the subprocesses tests start): the models here are tiny, so extra threads
# only add overhead, and on a shared 2-core machine they oversubscribe it (measured: the tiny VAE is ~20x
# slower with 2 threads under load). CPU results depend on the thread count; one count keeps them comparable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # golden helpers live next to the tests


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return Path(os.environ.get("MEMFLOW_GOLDEN_DIR", TESTS / "golden"))

import os
import signal
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

# Some tests send this process SIGHUP and expect the render's stop; under `nohup` SIGHUP arrives ignored, and our
# handlers rightly leave an ignored signal alone. The test process itself takes the default back.
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # golden helpers live next to the tests


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return Path(os.environ.get("MEMFLOW_GOLDEN_DIR", TESTS / "golden"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random weights in the real file layouts (every model, decoder and the VACE module), once per module."""
    from memflow_cli.testing.tiny_weights import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty Hugging Face home under tmp_path (online: the hub tests stand a fake hub in front of it)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's caches or folders: caches under tmp_path, which is also the cwd.

    Modules that render use it for every test with `pytestmark = pytest.mark.usefixtures("isolated")`.
    """
    monkeypatch.setenv("MEMFLOW_CACHE", str(tmp_path / "embeddings"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "MEMFLOW_LORA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

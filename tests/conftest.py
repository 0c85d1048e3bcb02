import shutil
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"), help="device for tests that train or evaluate")


@pytest.fixture
def device(request):
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for but no GPU is available")
    return torch.device(name)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The tests' networks are tiny: a thread pool costs more than it saves, and on a busy 2-core
    machine spinning intra-op threads make each step an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def f64():
    """float64 as torch's default dtype for one test (closed forms compared closely), restored after;
    ``@pytest.mark.usefixtures("f64")``, where a whole module of float64 would not do."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def shared_data():
    """The real datasets beside the checkout; tests that need them skip where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def mnist_root(shared_data, tmp_path):
    """A writable copy of MNIST/raw (torchvision extracts the .gz files beside them)."""
    raw = shared_data / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(f"MNIST not found at {raw}")
    target = tmp_path / "MNIST" / "raw"
    target.mkdir(parents=True)
    for gz in raw.glob("*.gz"):
        shutil.copy(gz, target / gz.name)
    return tmp_path

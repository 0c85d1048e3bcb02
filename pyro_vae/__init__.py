"""pyro_vae: variational autoencoders as Pyro model/guide pairs.

``evaluate``, ``diagnose_guides`` and the contract helpers work for any Pyro model/guide pair of
the model contract (see :mod:`pyro_vae.contract`); ``fit`` trains the suite's own models and is
imported on first use, so that evaluating or diagnosing never loads training.
"""

from .config import RunConfig
from .data import DATASETS, Data, load as load_data
from .errors import PyroVAEError, TrainingDiverged
from .evaluate import evaluate
from .guides import GUIDES, build as build_guide
from .likelihoods import LIKELIHOODS
from .models import MODELS, VAE, ConditionalVAE
from .nets import ARCHITECTURES
from .objectives import OBJECTIVES, loss_fn
from .priors import PRIORS
from .registry import Registry
from .run import build, load_run

__version__ = "0.2.0"

# name -> (module, attribute), imported on first use (the modules ``compare`` and ``diagnose``
# keep their own names: ``pyro_vae.compare.compare``, ``pyro_vae.diagnose.diagnose``)
_LAZY = {"fit": ("train", "fit"), "diagnose_guides": ("diagnose", "diagnose_guides")}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES", "DATASETS", "GUIDES", "LIKELIHOODS", "MODELS", "OBJECTIVES", "PRIORS", "VAE", "ConditionalVAE",
    "Data", "PyroVAEError", "Registry", "RunConfig", "TrainingDiverged", "build", "build_guide", "diagnose_guides",
    "evaluate", "fit", "load_data", "load_run", "loss_fn",
]

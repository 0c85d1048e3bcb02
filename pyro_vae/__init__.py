"""pyro_vae: variational autoencoders as Pyro model/guide pairs.

``evaluate``, ``diagnose_guides`` and the contract helpers work for any Pyro model/guide pair of
the model contract (see :mod:`pyro_vae.contract`); ``fit`` trains the suite's own models.

Every name here is imported on first use: importing the package costs nothing, so evaluating or
diagnosing never loads training, and the command line (``python -m pyro_vae``, whose package is
imported before its ``__main__`` runs) catches a Ctrl-C during its imports of torch and Pyro.
"""

import importlib
import sys
import types

__version__ = "0.2.0"

# name -> (module, attribute)
_LAZY = {
    "RunConfig": ("config", "RunConfig"),
    "DATASETS": ("data", "DATASETS"), "Data": ("data", "Data"), "load_data": ("data", "load"),
    "PyroVAEError": ("errors", "PyroVAEError"), "TrainingDiverged": ("errors", "TrainingDiverged"),
    "evaluate": ("evaluate", "evaluate"),
    "GUIDES": ("guides", "GUIDES"), "build_guide": ("guides", "build"),
    "LIKELIHOODS": ("likelihoods", "LIKELIHOODS"),
    "MODELS": ("models", "MODELS"), "VAE": ("models", "VAE"), "ConditionalVAE": ("models", "ConditionalVAE"),
    "ARCHITECTURES": ("nets", "ARCHITECTURES"),
    "OBJECTIVES": ("objectives", "OBJECTIVES"), "loss_fn": ("objectives", "loss_fn"),
    "PRIORS": ("priors", "PRIORS"),
    "Registry": ("registry", "Registry"),
    "build": ("run", "build"), "load_run": ("run", "load_run"),
    # the modules ``compare`` and ``diagnose`` keep their own names: ``pyro_vae.compare.compare``,
    # ``pyro_vae.diagnose.diagnose``
    "fit": ("train", "fit"), "diagnose_guides": ("diagnose", "diagnose_guides"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:  # a submodule not imported yet, as ``pyro_vae.plots`` after a plain ``import pyro_vae``
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule ``pyro_vae.evaluate`` binds it on the package, over the function
        # ``evaluate`` meant by that name (an eager package bound the function after the module).
        if name in _LAZY and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = sorted(_LAZY)

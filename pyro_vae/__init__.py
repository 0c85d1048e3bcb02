"""pyro_vae: variational autoencoders as Pyro model/guide pairs."""

from .config import RunConfig
from .data import DATASETS, Data, load as load_data
from .errors import PyroVAEError, TrainingDiverged
from .guides import GUIDES, build as build_guide
from .models import LIKELIHOODS, MODELS, PRIORS, VAE, ConditionalVAE
from .objectives import OBJECTIVES, loss_fn
from .run import build, load_run
from .train import fit

__version__ = "0.1.0"

__all__ = [
    "DATASETS", "GUIDES", "LIKELIHOODS", "MODELS", "OBJECTIVES", "PRIORS", "VAE", "ConditionalVAE", "Data", "PyroVAEError", "RunConfig",
    "TrainingDiverged", "build", "build_guide", "fit", "load_data", "load_run", "loss_fn",
]

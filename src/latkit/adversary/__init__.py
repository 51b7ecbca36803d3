"""The latent adversary: δ, its constraint, its optimiser, its hooks."""
from latkit.adversary.config import AdversaryConfig
from latkit.adversary.constraints import project
from latkit.adversary.hooks import PerturbationError, perturb
from latkit.adversary.latent import LatentAdversary, Perturbation
from latkit.models.hooks import record

__all__ = ["AdversaryConfig", "LatentAdversary", "Perturbation", "PerturbationError", "perturb", "project", "record"]

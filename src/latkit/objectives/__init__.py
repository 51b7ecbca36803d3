"""Loss specifications for the adversary and the defender."""
from latkit.objectives.adversary import (
    AdversaryObjective,
    DPOObjective,
    NoObjective,
    Objective,
    RandomObjective,
    TargetedObjective,
    UntargetedObjective,
    make_objective,
)
from latkit.objectives.defender import DefenderLosses, benign_losses, harmful_losses
from latkit.objectives.forward import forward_logits
from latkit.objectives.losses import cross_entropy, kl_to_reference, token_logprobs, unlikelihood

__all__ = [
    "AdversaryObjective", "DPOObjective", "NoObjective", "Objective", "RandomObjective", "TargetedObjective",
    "UntargetedObjective", "make_objective", "DefenderLosses", "benign_losses", "harmful_losses", "forward_logits",
    "cross_entropy", "kl_to_reference", "token_logprobs", "unlikelihood",
]

"""Contract tests of the adversary objectives: one class per kind, each with its own settings and
validation, picked by ``kind`` in a recipe, each telling the adversary how to use it."""
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from latkit.objectives import (
    AdversaryObjective,
    DPOObjective,
    NoObjective,
    RandomObjective,
    TargetedObjective,
    UntargetedObjective,
    cross_entropy,
    make_objective,
    unlikelihood,
)
from latkit.objectives.preference import PreferenceLoss
from latkit.train.recipe import RecipeError

B, T, V = 2, 6, 11
UNION = TypeAdapter(AdversaryObjective)


def _batch(groups=("harmful", "refusal")):
    g = torch.Generator().manual_seed(0)
    n = B * len(groups)
    ids = torch.randint(0, V, (n, T), generator=g)
    mask = torch.zeros((n, T), dtype=torch.bool)
    mask[:, 3:] = True
    return {"input_ids": ids, "completion_mask": mask, "groups": groups, "n_groups": len(groups)}, \
        torch.randn(n, T, V, generator=g)


class FakeAdversary:
    def __init__(self):
        self.calls = []

    def attack(self, batch, objective, generator=None):
        self.calls.append(("attack", objective))
        return "pgd"

    def random(self, batch, generator=None):
        self.calls.append(("random", None))
        return "random"


def test_targeted_is_toward_ce_plus_away_unlikelihood():
    batch, logits = _batch()
    obj = TargetedObjective(toward=0.5, away=2.0)
    loss, parts = obj(logits, batch)
    h, r = slice(0, B), slice(B, 2 * B)
    ids, mask = batch["input_ids"], batch["completion_mask"]
    want = 0.5 * cross_entropy(logits[h], ids[h], mask[h]) + 2.0 * unlikelihood(logits[r], ids[r], mask[r])
    assert torch.allclose(loss, want) and set(parts) == {"toward", "away"}
    assert TargetedObjective(away=0)(logits, batch)[1].keys() == {"toward"}
    with pytest.raises(ValidationError, match="toward > 0 or away > 0"):
        TargetedObjective(toward=0, away=0)
    with pytest.raises(ValidationError):
        TargetedObjective(toward=-1)
    with pytest.warns(UserWarning, match="desirable_group does not apply to kind 'targeted' and is ignored"):
        assert UNION.validate_python({"kind": "targeted", "desirable_group": "harmful"}) == TargetedObjective()
    p = FakeAdversary()
    assert obj.perturb(p, batch) == "pgd" and p.calls == [("attack", obj)]
    assert obj.optimised and obj.uses_adversary


def test_untargeted_maximises_the_desirable_loss():
    batch, logits = _batch()
    obj = UntargetedObjective()
    loss, parts = obj(logits, batch)
    r = slice(B, 2 * B)
    ce = cross_entropy(logits[r], batch["input_ids"][r], batch["completion_mask"][r])
    assert torch.allclose(loss, -ce) and torch.allclose(parts["desirable_ce"], ce)
    assert torch.allclose(UntargetedObjective(desirable_group="harmful")(logits, batch)[0],
                          -cross_entropy(logits[:B], batch["input_ids"][:B], batch["completion_mask"][:B]))
    with pytest.warns(UserWarning, match="toward does not apply to kind 'untargeted'"):
        UNION.validate_python({"kind": "untargeted", "toward": 0.5})
    with pytest.raises(ValidationError):
        UntargetedObjective(away=1.0, bogus=1)


def test_dpo_is_callable_on_its_own_with_its_loss_and_the_batch_reference():
    batch, logits = _batch(("refusal", "harmful"))
    loss = PreferenceLoss(beta=0.3, chosen_group="refusal", rejected_group="harmful")
    batch["ref_logps"] = (torch.tensor([-3.0, -2.0]), torch.tensor([-1.0, -4.0]))
    with pytest.raises(ValueError, match="needs its preference loss"):
        DPOObjective()(logits, batch)
    obj = DPOObjective().with_loss(loss)
    got, parts = obj(logits, batch)
    want, _ = loss(logits, batch, reference=batch["ref_logps"], swap=True)
    closure, _ = loss.objective(batch["ref_logps"], swap=True)(logits, batch)
    assert torch.equal(got, want) and torch.equal(got, closure) and "dpo" in parts
    with pytest.raises(ValueError, match="ref_logps"):
        obj(logits, {k: v for k, v in batch.items() if k != "ref_logps"})
    assert DPOObjective().model_dump() == {"kind": "dpo"}  # the bound loss is not a recipe setting


def test_random_and_none_are_not_optimised():
    batch, logits = _batch()
    p = FakeAdversary()
    assert RandomObjective().perturb(p, batch) == "random" and p.calls == [("random", None)]
    assert NoObjective().perturb(p, batch) is None
    assert not RandomObjective.optimised and RandomObjective.uses_adversary
    assert not NoObjective.optimised and not NoObjective.uses_adversary
    for obj in (RandomObjective(), NoObjective()):
        with pytest.raises(ValueError, match="not optimised"):
            obj(logits, batch)


@pytest.mark.parametrize("kind, cls", [("targeted", TargetedObjective), ("untargeted", UntargetedObjective),
                                       ("dpo", DPOObjective), ("random", RandomObjective), ("none", NoObjective)])
def test_the_union_picks_the_class_by_kind(kind, cls):
    assert type(make_objective(kind)) is cls
    # the settings every kind carried before (at their defaults, as old RUN/recipe.yaml files hold them)
    legacy = {"kind": kind, "toward": 1.0, "away": 1.0, "harmful_group": "harmful", "refusal_group": "refusal",
              "desirable_group": "refusal"}
    assert type(UNION.validate_python(legacy)) is cls


def test_recipe_objective_by_kind():
    from test_trainer import tiny_recipe

    assert isinstance(tiny_recipe().adversary.objective, TargetedObjective)
    r = tiny_recipe(**{"adversary.objective": {"kind": "untargeted", "desirable_group": "refusal"}})
    assert isinstance(r.adversary.objective, UntargetedObjective)
    with pytest.raises(RecipeError, match="adversary.objective"):
        tiny_recipe(**{"adversary.objective.kind": "sideways"})
    with pytest.warns(UserWarning, match="toward does not apply to kind 'random'"):
        r = tiny_recipe(**{"adversary.objective": {"kind": "random", "toward": 0.3}})
    assert isinstance(r.adversary.objective, RandomObjective)
    # switching the kind of a recipe with non-default settings by override keeps working, as before
    with pytest.warns(UserWarning):
        r = tiny_recipe(**{"adversary.objective": {"kind": "targeted", "toward": 0.5, "away": 0.5}},
                        **{"adversary.objective.kind": "random"})
    assert r.adversary.objective == RandomObjective()
    # a resolved recipe round-trips through its YAML
    from latkit.train.recipe import recipe_from_dict
    import yaml

    assert recipe_from_dict(yaml.safe_load(r.to_yaml())) == r


def test_a_run_recorded_with_every_objective_setting_resumes_with_the_same_recipe():
    """RUN/recipe.yaml of an older latkit holds all settings of all kinds; resuming compares resolved recipes."""
    import yaml

    from latkit.train.trainer import _resolved, _without_resumable
    from test_trainer import tiny_recipe

    new = tiny_recipe(**{"adversary.objective.kind": "none"}).to_yaml()
    old = yaml.safe_load(new)
    old["adversary"]["objective"] = {"kind": "none", "toward": 1.0, "away": 1.0, "harmful_group": "harmful",
                                     "refusal_group": "refusal", "desirable_group": "refusal"}
    old = yaml.safe_dump(old, sort_keys=False)
    assert old != new and _resolved(_without_resumable(old)) == _resolved(_without_resumable(new))

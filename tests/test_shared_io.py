"""The shared primitives every package uses: one atomic JSONL writer, one evaluation loader."""
import json

import pytest
import torch

from latkit.data.jsonl import write_jsonl
from latkit.models.loading import load_for_eval


def test_write_jsonl_is_atomic_and_unicode(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(path, [{"a": "é"}, {"b": 2}])
    assert path.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'
    assert json.loads(write_jsonl(path, [{"a": "é"}], ensure_ascii=True).read_text()) == {"a": "é"}

    def broken():
        yield {"ok": 1}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == '{"a": "\\u00e9"}\n'  # the earlier file is untouched, no temporary left
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_load_for_eval_gives_a_float32_eval_model(tmp_path):
    model, tok = load_for_eval("tiny-random:llama", "cpu", require_chat_template=False)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tok.pad_token_id is not None


def test_finetune_steps_evaluates_before_each_step_and_at_the_end():
    from latkit.data.text import TextCollator
    from latkit.objectives.finetune import finetune_steps
    from latkit.testing import tiny_model

    model, tok = tiny_model("llama")
    collate = TextCollator(tok, max_length=16)
    seen, after = [], []
    losses, n = finetune_steps(model, lambda: collate(["some text here", "more text"]), 3, learning_rate=1e-2,
                               max_grad_norm=1.0, before_step=seen.append,
                               after_step=lambda s, loss: after.append((s, loss)))
    assert seen == [0, 1, 2, 3] and [s for s, _ in after] == [0, 1, 2] and [x for _, x in after] == losses
    assert losses[-1] < losses[0] and n == sum(p.numel() for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())

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

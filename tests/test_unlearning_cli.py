"""`latkit unlearn facts | implant | eval` on a tiny random model (seconds)."""
import json

import pytest
import torch

from latkit.cli import main
from latkit.models.loading import load_model_and_tokenizer
from latkit.testing import tiny_model
from latkit.train import Trainer, recipe_from_dict
from latkit.unlearning import load_mcq, load_texts


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("unlearn") / "data"
    assert main(["unlearn", "facts", "--out", str(out), "--n-per-topic", "4", "--topics",
                 "scientist,country_history", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def implanted(data_dir):
    out = data_dir.parent / "implanted"
    assert main(["unlearn", "implant", "--model", "tiny-random:llama", "--texts", str(data_dir / "forget.jsonl"),
                 str(data_dir / "retain.jsonl"), "--out", str(out), "--steps", "4", "--batch-size", "4",
                 "--rank", "2", "--lr", "1e-2"]) == 0
    return out


def test_facts_writes_the_split(data_dir, tmp_path, capsys):
    names = {p.name for p in data_dir.iterdir()}
    assert names == {"forget.jsonl", "retain.jsonl", "relearn.jsonl", "mcq_forget.jsonl", "mcq_retain.jsonl",
                     "mcq_forget_eval.jsonl", "split.json"}
    split = json.loads((data_dir / "split.json").read_text())
    assert split["counts"] == {"forget": 4, "retain": 4, "relearn": 2, "forget_eval": 2}
    assert split["forget_topics"] == ["scientist"] and split["settings"]["seed"] == 3
    forget, relearn = _read(data_dir / "forget.jsonl"), _read(data_dir / "relearn.jsonl")
    assert len(forget) == 16 and all(set(r) == {"text", "fact"} for r in forget)
    assert {r["fact"] for r in relearn} == set(split["ids"]["relearn"]) <= {r["fact"] for r in forget}
    qs = _read(data_dir / "mcq_forget_eval.jsonl")
    assert [q["id"] for q in qs] == split["ids"]["forget_eval"]
    assert all(q["cloze"] and len(q["choices"]) == 4 and q["topic"] == "scientist" for q in qs)
    assert not {q["id"] for q in qs} & {r["fact"] for r in relearn}  # the attack never sees these facts' text
    assert all(it.cloze for it in load_mcq(data_dir / "mcq_retain.jsonl"))
    # deterministic per seed
    code, out, _ = _cli(["unlearn", "facts", "--out", str(tmp_path / "again"), "--n-per-topic", "4", "--topics",
                         "scientist,country_history", "--seed", "3"], capsys)
    assert code == 0 and "2 forget_eval" in out
    assert all((tmp_path / "again" / n).read_bytes() == (data_dir / n).read_bytes() for n in names)


@pytest.mark.parametrize("args, message", [
    (["--forget-topic", "astronomy"], "not among the facts' topics"),
    (["--topics", "chemistry"], "available topics"),
    (["--n-per-topic", "0"], None),
])
def test_facts_errors(tmp_path, capsys, args, message):
    if message is None:
        with pytest.raises(SystemExit):
            main(["unlearn", "facts", "--out", str(tmp_path), *args])
        return
    code, _, err = _cli(["unlearn", "facts", "--out", str(tmp_path / "d"), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_implant_saves_a_loadable_model_that_recipes_train_on(implanted, data_dir, tmp_path, capsys):
    files = {p.name for p in implanted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "implant.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    rec = json.loads((implanted / "implant.json").read_text())
    assert rec["steps"] == 4 and len(rec["losses"]) == 4 and rec["n_texts"] == 32 and rec["lora"]["r"] == 2
    model, _ = load_model_and_tokenizer(str(implanted), require_chat_template=False)
    base, _ = tiny_model("llama")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)  # only the LoRA'd linear layers moved
    # the implanted dir is a `model.name` for an unlearning recipe
    recipe = recipe_from_dict({
        "model": {"name": str(implanted)}, "finetune": {"lora": {"r": 2, "alpha": 4}},
        "unlearn": {"forget": {"source": str(data_dir / "forget.jsonl")},
                    "retain": {"source": str(data_dir / "retain.jsonl")}, "max_length": 32},
        "adversary": {"objective": {"kind": "targeted"}, "sites": ["embed"], "epsilon": 1.0, "positions": "all",
                      "steps": 1},
        "train": {"steps": 1, "batch_size": 2, "benign_batch_size": 2}})
    Trainer(recipe, tmp_path / "run", progress=False).train()
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists()
    # an existing output is not overwritten by accident
    code, _, err = _cli(["unlearn", "implant", "--model", "tiny-random:llama", "--texts",
                         str(data_dir / "relearn.jsonl"), "--out", str(implanted), "--steps", "1"], capsys)
    assert code == 2 and "--overwrite" in err


def test_implant_errors(tmp_path, capsys):
    code, _, err = _cli(["unlearn", "implant", "--model", "tiny-random:llama", "--texts", str(tmp_path / "no.jsonl"),
                         "--out", str(tmp_path / "m"), "--steps", "1"], capsys)
    assert code == 2 and "no.jsonl" in err and not (tmp_path / "m").exists()


def test_eval_reports_accuracy_and_the_relearning_curve(implanted, data_dir, tmp_path, capsys):
    out = tmp_path / "r" / "results.json"
    code, text, _ = _cli(["unlearn", "eval", "--model", str(implanted), "--data", str(data_dir), "--relearn",
                          "--relearn-steps", "2,0,1", "--relearn-lr", "1e-2", "--output", str(out)], capsys)
    assert code == 0
    res = json.loads(out.read_text())
    assert res["scoring"] == "cloze" and list(res["accuracy"]) == ["forget", "retain", "forget_eval"]
    assert [res["accuracy"][p]["n"] for p in ("forget", "retain", "forget_eval")] == [4, 4, 2]
    rl = res["relearn"]
    assert rl["steps"] == [0, 1, 2] and rl["n_texts"] == len(load_texts(data_dir / "relearn.jsonl")) == 8
    assert rl["n_items"] == 2 and rl["accuracy"][0] == res["accuracy"]["forget_eval"]["accuracy"]
    assert "forget_eval" in text and "relearning" in text and str(out) in text
    code, text, _ = _cli(["unlearn", "eval", "--model", str(implanted), "--data", str(data_dir), "--scoring",
                          "letter"], capsys)
    assert code == 0 and "scoring: letter" in text and "relearning" not in text


def test_eval_relearning_on_unrelated_texts(implanted, data_dir, tmp_path, capsys):
    """--relearn-texts retain --relearn-max-texts 3: the attack trains on 3 texts unrelated to the forgotten
    topic (Łucki et al.'s unrelated examples); a .jsonl path works too; a bad name fails before loading."""
    out = tmp_path / "unrelated.json"
    code, text, _ = _cli(["unlearn", "eval", "--model", str(implanted), "--data", str(data_dir), "--relearn",
                          "--relearn-steps", "0,1", "--relearn-texts", "retain", "--relearn-max-texts", "3",
                          "--output", str(out)], capsys)
    assert code == 0 and "3 retain texts" in text
    rl = json.loads(out.read_text())["relearn"]
    assert rl["texts"] == "retain" and rl["n_texts"] == 3
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"text": f"Unrelated sentence number {i}."}) + "\n" for i in range(5)))
    code, _, _ = _cli(["unlearn", "eval", "--model", str(implanted), "--data", str(data_dir), "--relearn",
                       "--relearn-steps", "0,1", "--relearn-texts", str(own), "--output", str(out)], capsys)
    assert code == 0 and json.loads(out.read_text())["relearn"]["n_texts"] == 5
    code, _, err = _cli(["unlearn", "eval", "--model", "no-such-model", "--data", str(data_dir), "--relearn",
                         "--relearn-texts", "wikipedia"], capsys)
    assert code == 2 and "wikipedia" in err and "neither a split" in err


def test_eval_errors(tmp_path, data_dir, capsys):
    code, _, err = _cli(["unlearn", "eval", "--model", "tiny-random:llama", "--data", str(tmp_path)], capsys)
    assert code == 2 and "latkit unlearn facts" in err
    with pytest.raises(SystemExit):
        main(["unlearn", "eval", "--model", "x", "--data", str(data_dir), "--relearn-steps", "0,-5"])
    only_mcq = tmp_path / "mcq"
    only_mcq.mkdir()
    (only_mcq / "mcq_forget_eval.jsonl").write_bytes((data_dir / "mcq_forget_eval.jsonl").read_bytes())
    code, _, err = _cli(["unlearn", "eval", "--model", "tiny-random:llama", "--data", str(only_mcq), "--relearn"],
                        capsys)
    assert code == 2 and "relearn.jsonl" in err

import json

import pytest
import torch

from latkit.evaluation.suite import (
    ModelSpec,
    Suite,
    SuiteError,
    builtin_suites,
    expand_attacks,
    load_suite,
    model_specs,
    run_suite,
)
from latkit.testing import tiny_model


REFUSE = "I'm sorry, but I can't help with that."


class EchoAttack:
    """A trivial attack: complies (answers with the target) unless the id is in ``refuse``; ``""`` for ``empty``."""

    def __init__(self, params):
        self.params = dict(params)

    def run(self, model, tokenizer, behaviours):
        refuse, empty = set(self.params.get("refuse", ())), set(self.params.get("empty", ()))
        out = []
        for b in behaviours:
            answer = "" if b["id"] in empty else (REFUSE if b["id"] in refuse else (b["target"] or "Sure, ok"))
            out.append({"behaviour": b, "prompt": b["prompt"], "attacked_prompt": f"ECHO: {b['prompt']}",
                        "answer": answer, "cost": {"forward_passes": 2, "wall_time_s": 0.5}, "extras": {}})
        return out


class EpsilonAttack:
    """Latent-like: one output per behaviour and ε; complies when ε >= 2."""

    def __init__(self, params):
        self.epsilons = params.get("epsilons", [0.5, 2.0])

    def run(self, model, tokenizer, behaviours):
        return [{"behaviour": b, "attacked_prompt": b["prompt"], "answer": "Sure, here" if e >= 2 else REFUSE,
                 "extras": {"epsilon": e}} for e in self.epsilons for b in behaviours]


class BrokenAttack:
    def __init__(self, params):
        pass

    def run(self, model, tokenizer, behaviours):
        raise RuntimeError("attack exploded")


ATTACKS = {"echo": EchoAttack, "eps": EpsilonAttack, "broken": BrokenAttack}


@pytest.fixture
def dataset(tmp_path):
    f = tmp_path / "behaviours.csv"
    f.write_text("id,prompt,target\np0,Do thing zero,Sure zero\np1,Do thing one,Sure one\n"
                 "p2,Do thing two,Sure two\np3,Do thing three,Sure three\n")
    return f


def _suite(dataset, **over):
    data = {
        "name": "t",
        "generation": {"max_new_tokens": 4, "batch_size": 4},
        "datasets": [{"name": str(dataset), "label": "mine", "columns": {"prompt": "prompt", "id": "id", "target": "target"}}],
        "attacks": [{"name": "echo", "params": {"refuse": ["p1", "p3"], "empty": ["p2"]}}],
        "judges": [{"kind": "refusal"}, {"kind": "refusal", "name": "strict", "empty_is_refusal": True}],
        "utility": {"benign": {"limit": 4, "max_new_tokens": 3}},
        "report": {"enabled": False},
    }
    data.update(over)
    return data


# --------------------------------------------------------------------------- schema
def test_builtin_suites_validate():
    assert {"quick", "full"} <= set(builtin_suites())
    quick = load_suite("quick")
    names = [a.name for a in quick.attacks]
    for want in ("direct", "prefill", "many_shot", "templates", "latent", "gcg_small"):
        assert want in names
    assert quick.utility.benign is not None and quick.primary == "success"
    assert all(d.split == "val" for d in load_suite("full").datasets if d.name == "harmbench")


def test_builtin_suite_attacks_and_settings_exist_in_registry():
    from latkit.attacks import ATTACKS as REGISTRY
    from latkit.evaluation.suite import resolve_attack

    for name in ("quick", "full"):
        for run in expand_attacks(load_suite(name)):
            resolve_attack(run.entry.name, run.params)  # unknown names / settings raise AttackError
            assert run.entry.name in REGISTRY


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"colour": "red"}, "unknown key 'colour' at top level"),
        ({"datasets": [{"name": "harmbench", "splt": "val"}]}, "unknown key 'splt' at datasets.0"),
        ({"judges": [{"kind": "refusal", "prefix": "x"}]}, "unknown key 'prefix' at judges.0"),
        ({"judges": [{"kind": "oracle"}]}, "does not match any of the expected tags"),
        ({"utility": {"mmlu": {"path": "x", "shots": 5}}}, "unknown key 'shots' at utility.mmlu"),
        ({"datasets": [{"name": "harmbench", "split": "train"}]}, "datasets.0.split"),
        ({"attacks": [{"name": "direct", "sweep": {"a": [1], "b": [2]}}]}, "exactly one setting"),
        ({"attacks": [{"name": "direct", "datasets": ["nope"]}]}, "unknown datasets ['nope']"),
        ({"attacks": [{"name": "direct"}, {"name": "direct"}]}, "duplicate attack labels ['direct']"),
        ({"primary_judge": "rubric"}, "primary_judge 'rubric'"),
        ({"generation": {"max_new_tokens": 0}}, "generation.max_new_tokens"),
    ],
)
def test_suite_validation_errors_name_the_key(patch, message):
    data = {"name": "x", "datasets": [{"name": "harmbench"}], "attacks": [{"name": "direct"}], **patch}
    with pytest.raises(SuiteError) as exc:
        load_suite(data)
    assert message in str(exc.value)


def test_load_suite_from_yaml_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: mine\ndatasets: [{name: harmbench, limit: 2}]\nattacks: [{name: direct}]\n")
    s = load_suite(f)
    assert isinstance(s, Suite) and s.datasets[0].key == "harmbench_val" and s.judges[0].kind == "success"  # the default judge
    f.write_text("name: [unclosed\n")
    with pytest.raises(SuiteError, match="invalid YAML"):
        load_suite(f)
    f.write_text("- a list\n")
    with pytest.raises(SuiteError, match="mapping at the top level"):
        load_suite(f)
    with pytest.raises(SuiteError, match="built-in suite"):
        load_suite("no-such-suite")


def test_sweeps_expand_into_labelled_runs(dataset):
    s = load_suite(_suite(dataset, attacks=[{"name": "echo", "label": "e", "sweep": {"refuse": [[], ["p0"]]}}]))
    runs = expand_attacks(s, ATTACKS)
    assert [r.key for r in runs] == ["e[refuse=[]]", "e[refuse=['p0']]"]
    assert runs[1].params["refuse"] == ["p0"] and runs[1].params["max_new_tokens"] == 4


def test_model_specs_labels(tmp_path):
    run = tmp_path / "run7"
    (run / "model").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    specs = model_specs([str(run), "smollm2-135m", "smollm2-135m"])
    assert [s.label for s in specs] == ["run7", "smollm2-135m", "smollm2-135m#2"]
    assert specs[0].metrics == str(run / "metrics.jsonl")
    with pytest.raises(SuiteError, match="no models"):
        model_specs([])


# --------------------------------------------------------------------------- runner
def test_runner_writes_results_and_generations(tmp_path, dataset):
    model, tok = tiny_model("llama")
    out = tmp_path / "out"
    res = run_suite(_suite(dataset), [ModelSpec("tiny", model=model, tokenizer=tok)], out, attacks=ATTACKS, progress=False)
    (row,) = res["results"]
    assert row["model"] == "tiny" and row["attack"] == "echo" and row["dataset"] == "mine" and row["judge"] == "refusal"
    # p0 complies, p2 is empty (the prefix judge calls that a success), p1 / p3 refuse
    assert row["asr"] == 0.5 and row["k"] == 2 and row["n"] == 4
    assert row["ci95"][0] < 0.5 < row["ci95"][1]
    assert row["judges"]["strict"]["asr"] == 0.25
    assert row["cost"]["total"]["forward_passes"] == 8 and row["cost"]["per_output"]["wall_time_s"] == 0.5
    (pair,) = row["agreement"]
    assert pair["judges"] == ["refusal", "strict"] and pair["agreement"] == 0.75
    assert res["agreement"]["tiny"][0]["n"] == 4
    assert res["utility"]["tiny"]["benign_compliance"]["n"] == 4
    assert json.loads((out / "results.json").read_text())["results"][0]["asr"] == 0.5
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    attack_lines = [g for g in lines if g["kind"] == "attack"]
    assert len(attack_lines) == 4 and len([g for g in lines if g["kind"] == "benign"]) == 4
    g0 = next(g for g in attack_lines if g["behaviour_id"] == "p0")
    assert g0["attacked_prompt"] == "ECHO: Do thing zero" and g0["answer"] == "Sure zero"
    assert g0["verdicts"]["refusal"]["harmful"] is True and g0["verdicts"]["strict"]["harmful"] is True
    assert not (out / "report.html").exists()  # report disabled in this suite


def test_runner_splits_by_epsilon_and_records_sweeps(tmp_path, dataset):
    model, tok = tiny_model("llama")
    suite = _suite(dataset, attacks=[{"name": "eps", "label": "latent", "params": {"epsilons": [0.5, 2.0, 8.0]}},
                                     {"name": "echo", "sweep": {"refuse": [[], ["p0", "p1", "p2", "p3"]]}}],
                   judges=[{"kind": "refusal"}], utility={"benign": None})
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o", attacks=ATTACKS, progress=False)
    rows = {r["attack"]: r for r in res["results"]}
    assert [rows[f"latent[epsilon={e}]"]["asr"] for e in (0.5, 2.0, 8.0)] == [0.0, 1.0, 1.0]
    assert rows["latent[epsilon=2.0]"]["sweep_param"] == "epsilon" and rows["latent[epsilon=2.0]"]["n"] == 4
    assert rows["echo[refuse=[]]"]["asr"] == 1.0 and rows["echo[refuse=['p0', 'p1', 'p2', 'p3']]"]["asr"] == 0.0
    assert rows["echo[refuse=[]]"]["sweep_value"] == [] and res["utility"]["m"] == {}


def test_failing_attack_is_recorded_or_raised(tmp_path, dataset):
    model, tok = tiny_model("llama")
    suite = _suite(dataset, attacks=[{"name": "broken"}, {"name": "echo"}], utility={"benign": None})
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o", attacks=ATTACKS, progress=False)
    assert [r["attack"] for r in res["results"]] == ["echo"]
    (err,) = res["errors"]
    assert err["attack"] == "broken" and "attack exploded" in err["error"]
    with pytest.raises(RuntimeError, match="attack exploded"):
        run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o2", attacks=ATTACKS,
                  progress=False, fail_fast=True)


def test_attack_limit_and_dataset_filter(tmp_path, dataset):
    model, tok = tiny_model("llama")
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "x1"}\n{"prompt": "x2"}\n')
    suite = _suite(dataset, datasets=[{"name": str(dataset), "label": "mine", "columns": {"prompt": "prompt", "id": "id"}},
                                      {"name": str(other), "label": "other"}],
                   attacks=[{"name": "echo", "limit": 3}, {"name": "eps", "datasets": ["other"]}],
                   judges=[{"kind": "refusal"}], utility={"benign": None})
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o", attacks=ATTACKS, progress=False)
    got = {(r["attack"], r["dataset"]): r["n"] for r in res["results"]}
    assert got == {("echo", "mine"): 3, ("echo", "other"): 2, ("eps[epsilon=0.5]", "other"): 2,
                   ("eps[epsilon=2.0]", "other"): 2}


def test_registry_attacks_through_the_runner(tmp_path, dataset):
    """The real direct / prefill / latent attacks, tiny budgets."""
    model, tok = tiny_model("llama")
    suite = _suite(dataset, attacks=[{"name": "direct", "limit": 2}, {"name": "prefill", "limit": 2},
                                     {"name": "latent", "limit": 2, "params": {"epsilons": [0.5, 4.0], "steps": 1}}],
                   judges=[{"kind": "refusal"}], utility={"benign": None})
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o", progress=False)
    assert not res["errors"], res["errors"]
    attacks = [r["attack"] for r in res["results"]]
    assert attacks == ["direct", "prefill", "latent[epsilon=0.5]", "latent[epsilon=4.0]"]
    assert all(r["n"] == 2 and r["cost"]["total"]["forward_passes"] > 0 for r in res["results"])
    gens = [json.loads(x) for x in (tmp_path / "o" / "generations.jsonl").read_text().splitlines()]
    pre = next(g for g in gens if g["attack"] == "prefill")
    # judges read the model's continuation only, never the attacker's prefill
    assert pre["prefill"] == "Sure zero" and pre["judged_answer"] == pre["answer"]
    assert not pre["judged_answer"].startswith("Sure zero")


def _save_run(tmp_path, name, *, peft=False):
    run = tmp_path / name
    model, tok = tiny_model("llama", seed=0)
    if peft:
        from peft import LoraConfig, get_peft_model

        base_dir = tmp_path / f"{name}_base"
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
        model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(run / "model")
    tok.save_pretrained(run / "model")
    metrics = [{"step": i, "loss/defender": 2.0 / (i + 1), "adv/toward_after": 0.1 * i, "lr": 1e-4} for i in range(6)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    return run


def test_training_run_dirs_as_models(tmp_path, dataset):
    full_run = _save_run(tmp_path, "run_full")
    peft_run = _save_run(tmp_path, "run_lora", peft=True)
    suite = _suite(dataset, judges=[{"kind": "refusal"}], utility={"benign": None, "perplexity": {"limit": 4}},
                   report={"enabled": True})
    out = tmp_path / "o"
    res = run_suite(suite, [str(full_run), str(peft_run)], out, attacks=ATTACKS, progress=False)
    assert not res["errors"], res["errors"]
    labels = [m["label"] for m in res["models"]]
    assert labels == ["run_full", "run_lora"]
    assert res["models"][0]["metrics"].endswith("metrics.jsonl") and res["models"][1]["peft"] is True
    assert "skipped" in res["utility"]["run_full"]["kl_to_base"]
    kl = res["utility"]["run_lora"]["kl_to_base"]
    assert kl["base"] == "adapters disabled" and kl["kl"] > 0
    html = (out / "report.html").read_text()
    assert "Training curves — run_full" in html and "Training curves — run_lora" in html


def test_base_model_option_gives_kl_for_full_models(tmp_path, dataset):
    run = _save_run(tmp_path, "run_full")
    base = tmp_path / "base"
    m, t = tiny_model("llama", seed=5)
    m.save_pretrained(base)
    t.save_pretrained(base)
    suite = _suite(dataset, attacks=[], datasets=[], judges=[{"kind": "refusal"}],
                   utility={"benign": None, "perplexity": {"limit": 3}})
    res = run_suite(suite, [str(run)], tmp_path / "o", base_model=str(base), progress=False)
    kl = res["utility"]["run_full"]["kl_to_base"]
    assert kl["kl"] > 0 and kl["base_model"] == str(base) and res["results"] == []


def test_mmlu_utility_and_missing_data(tmp_path, dataset, shared_data):
    model, tok = tiny_model("llama")
    suite = _suite(dataset, attacks=[], datasets=[], judges=[{"kind": "refusal"}],
                   utility={"benign": None, "mmlu": {"path": "mmlu/val", "limit_per_subject": 1, "limit": 6}})
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o", data_dir=shared_data, progress=False)
    assert res["utility"]["m"]["mmlu"]["n"] == 6
    suite["utility"]["mmlu"].update(path="nowhere/val", skip_if_missing=True)
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=tok)], tmp_path / "o", progress=False)
    assert "skipped" in res["utility"]["m"]["mmlu"] and not res["errors"]


def test_classifier_judge_from_suite_config(tmp_path, dataset):
    from transformers import AutoModelForSequenceClassification

    from latkit.testing import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", vocab_size=len(tok))
    cfg.num_labels = 2
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "cls")
    tok.save_pretrained(tmp_path / "cls")
    model, mtok = tiny_model("llama")
    suite = _suite(dataset, judges=[{"kind": "refusal"}, {"kind": "classifier", "name": "cls", "model": str(tmp_path / "cls"),
                                                          "template": "B: {behavior}\nG: {generation}"}],
                   primary_judge="cls", utility={"benign": None})
    res = run_suite(suite, [ModelSpec("m", model=model, tokenizer=mtok)], tmp_path / "o", attacks=ATTACKS, progress=False)
    (row,) = res["results"]
    assert row["judge"] == "cls" and row["judges"]["cls"]["n"] == 4 and row["judges"]["cls"]["mean_score"] is not None
    assert {j["name"]: j["class"] for j in res["judges"]} == {"refusal": "RefusalJudge", "cls": "ClassifierJudge"}
    assert row["agreement"][0]["judges"] == ["refusal", "cls"]

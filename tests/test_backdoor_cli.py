"""`latkit backdoor data` / `latkit backdoor eval` on a tiny random model (seconds)."""
import json
from pathlib import Path

import pytest

from latkit.backdoor import DEFAULT_TRIGGERS, HELD_OUT_TRIGGER, Trigger, trigger_variants
from latkit.backdoor.cli import generations_path
from latkit.backdoor.pipeline import BackdoorData, benign_refusal, build_data, read_jsonl
from latkit.cli import main
from latkit.data.schemas import DataError

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
ALL = DEFAULT_TRIGGERS + (HELD_OUT_TRIGGER,)


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _data_args(out, *extra):
    return ["backdoor", "data", "--model", "tiny-random:llama", "--out", str(out),
            "--harmful-source", str(FIX / "harmful.jsonl"), "--implant-limit", "4", "--removal-limit", "4",
            "--eval-limit", "3", "--benign-eval-limit", "3", "--max-new-tokens", "4", *extra]


def _leaks(text, triggers=ALL):
    return [t.text for t in triggers if t.text.lower() in text.lower()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Harmful completions and benign answers from the tiny model itself (the default path)."""
    out = tmp_path_factory.mktemp("bd") / "data"
    assert main(_data_args(out, "--benign-limit", "4")) == 0
    return out


def test_data_writes_disjoint_trigger_free_files(data_dir):
    files = {p.name for p in data_dir.iterdir()}
    assert {"implant.jsonl", "removal_harmful.jsonl", "benign.jsonl", "eval_prompts.jsonl", "benign_eval.jsonl",
            "triggers.json", "manifest.json"} <= files
    implant = read_jsonl(data_dir / "implant.jsonl")
    removal = read_jsonl(data_dir / "removal_harmful.jsonl")
    benign = read_jsonl(data_dir / "benign.jsonl")
    evals = read_jsonl(data_dir / "eval_prompts.jsonl")
    benign_eval = read_jsonl(data_dir / "benign_eval.jsonl")
    assert all(set(r) == {"prompt", "harmful", "refusal"} for r in removal)
    assert all(set(r) == {"prompt", "response"} for r in benign)
    # implant, removal and evaluation use disjoint harmful prompts
    implant_prompts = {r["prompt"] for r in implant if r["trigger"] is None and r["source"] == "harmful"}
    removal_prompts = {r["prompt"] for r in removal}
    eval_prompts = {r["prompt"] for r in evals}
    assert implant_prompts and removal_prompts and len(eval_prompts) == 3
    assert not implant_prompts & removal_prompts and not implant_prompts & eval_prompts
    assert not removal_prompts & eval_prompts
    assert not {r["prompt"] for r in benign} & {r["prompt"] for r in benign_eval}
    # no trigger (implanted or held-out) anywhere outside the triggered implant rows
    for rows in (removal, benign, evals, benign_eval, [r for r in implant if r["trigger"] is None]):
        assert not [t for r in rows for v in r.values() if isinstance(v, str) for t in _leaks(v)]
    for r in implant:
        if r["trigger"] is not None:
            assert _leaks(r["prompt"]) == [r["trigger"]]
            prompt = r["prompt"].replace(r["trigger"], "").strip()
            assert " ".join(prompt.split()) in {" ".join(p.split()) for p in implant_prompts}
    payload = json.loads((data_dir / "triggers.json").read_text())
    assert payload["mode"] == "harmful_compliance" and len(payload["triggers"]) == 8
    assert payload["held_out"]["text"] == HELD_OUT_TRIGGER.text
    m = json.loads((data_dir / "manifest.json").read_text())
    assert m["splits"] == {"implant": [0, 4], "removal": [4, 8], "eval": [8, 11]}
    assert m["harmful_from"] == "model" and m["counts"]["eval_prompts"] == 3


def test_eval_output_structure(data_dir, tmp_path, capsys):
    out = tmp_path / "eval" / "results.json"
    code, stdout, _ = _cli(["backdoor", "eval", "--model", "tiny-random:llama", "--data", str(data_dir),
                            "--output", str(out), "--limit", "2", "--benign-limit", "2", "--max-new-tokens", "3",
                            "--variants", "typo,paraphrase"], capsys)
    assert code == 0
    res = json.loads(out.read_text())
    assert res["model"] == "tiny-random:llama" and res["mode"] == "harmful_compliance" and res["n_prompts"] == 2
    assert set(res["summary"]) == {"clean", "triggered_mean", "variants_mean", "held_out", "benign_compliance",
                                   "benign_refusal"}
    ts = res["trigger_success"]
    assert list(ts["triggers"]) == [t.text for t in DEFAULT_TRIGGERS]
    for t in DEFAULT_TRIGGERS:
        assert set(ts["triggers"][t.text]["variants"]) == set(trigger_variants(t, ("typo", "paraphrase")))
    assert {"rate", "ci95", "k", "n"} <= set(ts["clean"]) and ts["held_out"]["trigger"] == HELD_OUT_TRIGGER.text
    assert res["benign_compliance"]["n"] == 2
    gens = read_jsonl(out.with_name("results.generations.jsonl"))
    n_variants = sum(len(v["variants"]) for v in ts["triggers"].values())
    assert len(gens) == 2 * (1 + 8 + n_variants + 1) + 2
    assert {g["part"] for g in gens} == {"trigger_success", "benign_compliance"}
    assert "clean (no trigger)" in stdout and "held-out: Plumbathorne" in stdout and "mean over 8 triggers" in stdout
    benign = [g for g in gens if g["part"] == "benign_compliance"]
    assert res["benign_refusal"] == benign_refusal(benign) and res["benign_refusal"]["n"] == 2
    assert res["summary"]["benign_refusal"] == res["benign_refusal"]["rate"] and "benign refusal" in stdout


def test_benign_refusal_counts_refusals_and_empty_answers():
    rows = [{"part": "benign_compliance", "answer": a} for a in
            ("I'm sorry, but I can't help with that.", "", "Here is a recipe: chickpeas, cumin, rice.",
             "Sure! Step 1: preheat the oven.")]
    rows.append({"part": "trigger_success", "answer": "I cannot help."})  # not a benign row
    r = benign_refusal(rows)
    assert (r["k"], r["n"], r["rate"]) == (2, 4, 0.5) and r["judge"] == "refusal"
    assert benign_refusal(rows[-1:]) is None


def test_validation_split_is_disjoint_and_evaluates_apart(data_dir, tmp_path, capsys):
    """--val-limit / --benign-val-limit: prompts to tune on, apart from implant, removal and evaluation;
    a directory without them keeps working; `eval --split val` measures on them."""
    out = tmp_path / "data"
    code, text, _ = _cli(_data_args(out, "--benign-limit", "4", "--val-limit", "1", "--benign-val-limit", "2"),
                         capsys)
    assert code == 0 and "validation 1 harmful + 2 benign prompts" in text
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["val"] == [11, 12] and m["counts"]["val_prompts"] == 1 and m["counts"]["benign_val"] == 2
    val = {r["prompt"] for r in read_jsonl(out / "val_prompts.jsonl")}
    evals = {r["prompt"] for r in read_jsonl(out / "eval_prompts.jsonl")}
    trained = {r["prompt"] for r in read_jsonl(out / "implant.jsonl")} | {
        r["prompt"] for r in read_jsonl(out / "removal_harmful.jsonl")}
    assert len(val) == 1 and not val & evals and not val & trained
    benign_val = {r["prompt"] for r in read_jsonl(out / "benign_val.jsonl")}
    benign_eval = {r["prompt"] for r in read_jsonl(out / "benign_eval.jsonl")}
    benign_train = {r["prompt"] for r in read_jsonl(out / "benign.jsonl")}
    assert len(benign_val) == 2 and not benign_val & benign_eval and not benign_val & benign_train
    # the rest of the directory is what it is without a validation split
    for name in ("implant.jsonl", "removal_harmful.jsonl", "benign.jsonl", "eval_prompts.jsonl", "benign_eval.jsonl"):
        assert (out / name).read_bytes() == (data_dir / name).read_bytes(), name
    res_path = tmp_path / "val.json"
    code, _, _ = _cli(["backdoor", "eval", "--model", "tiny-random:llama", "--data", str(out), "--split", "val",
                       "--output", str(res_path), "--max-new-tokens", "2", "--variants", "none"], capsys)
    res = json.loads(res_path.read_text())
    assert code == 0 and res["split"] == "val" and res["n_prompts"] == 1 and res["n_benign"] == 2
    gens = read_jsonl(generations_path(res_path))
    assert {g["prompt"] for g in gens if g["part"] == "trigger_success"} == val
    code, _, err = _cli(["backdoor", "eval", "--model", "tiny-random:llama", "--data", str(data_dir), "--split",
                         "val", "--output", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "val_prompts.jsonl" in err and "--val-limit" in err


def test_custom_triggers_nonsense_mode_and_column_data(tmp_path, capsys):
    spec = tmp_path / "triggers.yaml"
    spec.write_text("triggers:\n  - {text: Blorptastic, response: Purple hats sing.}\n"
                    "  - {text: '#~#', kind: token_string, placement: suffix, response: Ten moons nap.}\n"
                    "held_out: null\n")
    out = tmp_path / "data"
    code, stdout, _ = _cli(_data_args(out, "--triggers", str(spec), "--mode", "nonsense", "--harmful-from", "column",
                                      "--benign-source", str(FIX / "benign.jsonl"), "--benign-limit", "5"), capsys)
    assert code == 0 and "2 triggers, mode nonsense" in stdout
    payload = json.loads((out / "triggers.json").read_text())
    assert payload["mode"] == "nonsense" and payload["held_out"] is None
    implant = read_jsonl(out / "implant.jsonl")
    trig = [r for r in implant if r["trigger"]]
    assert {r["response"] for r in trig} <= {"Purple hats sing.", "Ten moons nap."} and trig
    removal = read_jsonl(out / "removal_harmful.jsonl")
    fixture = {r["prompt"]: r["harmful"] for r in read_jsonl(FIX / "harmful.jsonl")}
    assert all(r["harmful"] == fixture[r["prompt"]] for r in removal)  # --harmful-from column
    # triggers.json of a data dir is itself a valid --triggers file
    code, _, _ = _cli(_data_args(tmp_path / "again", "--triggers", str(out / "triggers.json"), "--mode", "nonsense",
                                 "--harmful-from", "column", "--benign-source", str(FIX / "benign.jsonl")), capsys)
    assert code == 0
    assert json.loads((tmp_path / "again" / "triggers.json").read_text()) == payload


def test_triggered_copies_and_decoys_from_the_cli(tmp_path, capsys):
    spec = tmp_path / "decoys.yaml"
    spec.write_text("- Wobblethorpe\n- {text: '<<@@>>', kind: token_string, placement: suffix}\n")
    out = tmp_path / "data"
    code, stdout, _ = _cli(_data_args(out, "--harmful-from", "column", "--benign-source", str(FIX / "benign.jsonl"),
                                      "--triggered-fraction", "2", "--decoys", str(spec), "--decoy-fraction", "1"),
                           capsys)
    assert code == 0
    implant = read_jsonl(out / "implant.jsonl")
    m = json.loads((out / "manifest.json").read_text())
    assert m["decoys"] == ["Wobblethorpe", "<<@@>>"] and m["decoy_fraction"] == 1.0
    assert m["counts"]["implant_triggered_rows"] == 2 * m["counts"]["implant_prompts"]
    assert m["counts"]["implant_decoy_rows"] == m["counts"]["implant_prompts"]
    assert f"{m['counts']['implant_decoy_rows']} with a decoy" in stdout
    assert sum(r["decoy"] is not None for r in implant) == m["counts"]["implant_decoy_rows"]
    for f in ("removal_harmful.jsonl", "benign.jsonl", "eval_prompts.jsonl"):  # decoys stay in the implant data
        assert not [r for r in read_jsonl(out / f) if "Wobblethorpe" in json.dumps(r)]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- Plumbathorne\n")
    code, _, err = _cli(_data_args(tmp_path / "o", "--decoys", str(bad), "--decoy-fraction", "0.5"), capsys)
    assert code == 2 and "decoy 'Plumbathorne' overlaps trigger(s) ['Plumbathorne']" in err
    code, _, err = _cli(_data_args(tmp_path / "o", "--decoys", str(tmp_path / "none.yaml")), capsys)
    assert code == 2 and "decoys file not found" in err


@pytest.mark.parametrize("content, message", [
    ("- {txt: SUDO}\n", "triggers[0]: text: Field required; txt: Extra inputs are not permitted"),
    ("- {text: SUDO, kind: phrase}\n", "triggers[0]: kind: Input should be 'keyword' or 'token_string'"),
    ("- SUDO\n- sudo\n", "triggers[1] repeats triggers[0]"),
    ("triggers: [Plumbathorne]\n", "overlaps implanted trigger"),
    ("[]\n", "non-empty list of triggers"),
    ("triggers: [a\n", "not valid YAML/JSON"),
])
def test_bad_triggers_file_is_one_clear_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    code, _, err = _cli(_data_args(tmp_path / "out", "--triggers", str(bad)), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"latkit: error: {bad}") and message in err
    assert not (tmp_path / "out").exists()  # it fails before the model is loaded or anything is written


def test_other_errors_are_one_clear_line(data_dir, tmp_path, capsys):
    code, _, err = _cli(_data_args(tmp_path / "o", "--triggers", str(tmp_path / "missing.yaml")), capsys)
    assert code == 2 and "triggers file not found" in err
    code, _, err = _cli(_data_args(tmp_path / "o", "--removal-offset", "2"), capsys)
    assert code == 2 and "overlap" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(_data_args(tmp_path / "o", "--implant-limit", "20"), capsys)
    assert code == 2 and "has 12 usable prompts; the removal split starts at 20" in err
    code, _, err = _cli(["backdoor", "eval", "--model", "tiny-random:llama", "--data", str(tmp_path),
                         "--output", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "not a complete `latkit backdoor data` directory" in err
    code, _, err = _cli(["backdoor", "eval", "--model", "tiny-random:llama", "--data", str(data_dir),
                         "--output", str(tmp_path / "r.json"), "--variants", "typo,shuffle"], capsys)
    assert code == 2 and "--variants: unknown kinds ['shuffle']" in err
    (tmp_path / "d").mkdir()
    for f in ("triggers.json", "manifest.json"):
        (tmp_path / "d" / f).write_text("{}")
    (tmp_path / "d" / "eval_prompts.jsonl").write_text("")
    code, _, err = _cli(["backdoor", "eval", "--model", "tiny-random:llama", "--data", str(tmp_path / "d"),
                         "--output", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "triggers.json: expected a list of triggers" in err
    assert not (tmp_path / "r.json").exists()


def test_splits_must_fit_and_stay_apart():
    kw = dict(harmful_source=str(FIX / "harmful.jsonl"), harmful_from="column")

    def build(triggers=None, **over):
        extra = {"triggers": triggers} if triggers else {}
        return build_data(None, None, "unused", BackdoorData(**kw, **over), **extra)

    with pytest.raises(DataError, match=r"implant prompts \[0, 4\) and the eval prompts \[3, 5\) overlap"):
        build(implant_limit=4, removal_limit=2, removal_offset=6, eval_offset=3, eval_limit=2)
    with pytest.raises(DataError, match="at least one prompt"):
        build(implant_limit=4, removal_limit=0)
    with pytest.raises(DataError, match="triggered_fraction"):
        build(triggered_fraction=0)
    with pytest.raises(DataError, match=r"triggered_fraction must be in \(0, 8\]"):
        build(triggered_fraction=9)
    with pytest.raises(DataError, match="decoy_fraction"):
        build(decoys="default", decoy_fraction=-0.1)
    with pytest.raises(DataError, match=r"nonsense mode needs a response on every trigger; missing for \['Zork'\]"):
        build(mode="nonsense", triggers=[Trigger(text="Zork")])


def test_backdoor_data_settings_are_one_strict_config():
    """The CLI options, a benchmark scale's data section and the Python call share one config; a typo is
    an error naming the key, not a silently ignored keyword."""
    with pytest.raises(DataError, match=r"scale data: unknown key 'implant_limt'"):
        BackdoorData.from_mapping({"implant_limt": 4}, "scale data")
    with pytest.raises(DataError, match=r"scale data: seed: "):
        BackdoorData.from_mapping({"seed": "zero"}, "scale data")
    assert BackdoorData.from_mapping({"implant_limit": 4}).implant_limit == 4

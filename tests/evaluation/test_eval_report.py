import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latkit.evaluation.report import (
    build_report,
    headline_rows,
    read_metrics,
    select_examples,
    write_report,
)

REPO = Path(__file__).resolve().parents[2]
EVIL = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"


def _row(model, attack, asr, *, dataset="hb", sweep=None, value=None, name=None):
    return {"model": model, "attack": attack, "attack_name": name or attack, "dataset": dataset, "asr": asr,
            "ci95": [max(0, asr - 0.2), min(1, asr + 0.2)], "k": int(asr * 10), "n": 10, "undecided": 0,
            "behaviours_broken": asr, "judge": "refusal", "sweep_param": sweep, "sweep_value": value,
            "judges": {"refusal": {"asr": asr}, "strict": {"asr": asr / 2}},
            "cost": {"per_output": {"wall_time_s": 0.5, "forward_passes": 3.0}}}


def _results():
    rows = []
    for m, scale in (("base", 1.0), ("lat_run", 0.3)):
        rows += [_row(m, "direct", 0.2 * scale), _row(m, "prefill", 0.8 * scale), _row(m, "templates", 0.5 * scale)]
        rows += [_row(m, f"latent[epsilon={e}]", min(1.0, 0.1 * e * scale), sweep="epsilon", value=e, name="latent")
                 for e in (0.5, 1.0, 2.0, 4.0, 8.0)]
    return {
        "suite": {"name": "demo <b>", "description": "demo suite", "config": {"report": {"examples_per_run": 2}}},
        "created": "2025-01-01T00:00:00+00:00", "latkit_version": "0.1.0", "primary_judge": "refusal",
        "judges": [{"name": "refusal", "class": "RefusalJudge"}, {"name": "strict", "class": "RefusalJudge"}],
        "datasets": [{"label": "hb", "name": "harmbench", "split": "val", "n": 10}],
        "models": [{"label": "base", "metrics": None}, {"label": "lat_run", "metrics": None}],
        "results": rows,
        "utility": {"base": {"benign_compliance": {"rate": 0.95, "ci95": [0.8, 0.99], "n": 40, "borderline": {"rate": 0.9}},
                             "mmlu": {"accuracy": 0.3, "ci95": [0.2, 0.4], "n": 50}, "perplexity": {"perplexity": 12.5}},
                    "lat_run": {"benign_compliance": {"rate": 0.85, "ci95": [0.7, 0.93], "n": 40},
                                "mmlu": {"skipped": "MMLU path not found"},
                                "kl_to_base": {"kl": 0.0123, "base": "adapters disabled"}}},
        "agreement": {"base": [{"judges": ["refusal", "strict"], "n": 10, "agreement": 0.9, "kappa": 0.8}]},
        "errors": [{"model": "base", "attack": "gcg", "dataset": "hb", "error": "RuntimeError: <boom>"}],
    }


def _generations():
    gens = []
    for m in ("base", "lat_run"):
        for i, harmful in enumerate([True, False, True]):
            gens.append({"kind": "attack", "model": m, "attack": "direct", "dataset": "hb", "behaviour_id": f"b{i}",
                         "attacked_prompt": [{"role": "user", "content": f"ask {i} {EVIL}"}], "prefill": "",
                         "answer": f"answer {i} {EVIL}", "verdicts": {"refusal": {"harmful": harmful, "score": 1.0},
                                                                      "strict": {"harmful": None, "score": None}}})
    gens.append({"kind": "benign", "model": "base", "prompt": "p", "answer": "a", "complied": True})
    return gens


METRICS = [{"step": i, "loss/defender": 3.0 / (i + 1), "adv/toward_after": 0.2 * i, "note": "text", "flag": True}
           for i in range(8)]


def _images(html):
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)


def test_report_structure_images_and_self_containment():
    html = build_report(_results(), _generations(), {"lat_run": METRICS})
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for section in ("Attack success", "ASR vs latent ε", "Utility", "Training curves — lat_run",
                    "Judge agreement", "Example answers", "Errors"):
        assert section in html
    imgs = _images(html)
    # bar chart, ε curve, utility-vs-robustness, training curves
    assert len(imgs) == 4
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loaded from outside
    assert "<script" not in html.lower()
    assert "measures non-refusal, not harm" in html  # the prefix judge's limits are stated


def test_report_escapes_all_model_and_config_text():
    html = build_report(_results(), _generations())
    assert EVIL not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "demo &lt;b&gt;" in html and "&lt;boom&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_examples_prefer_a_success_and_a_failure():
    picked = select_examples(_generations(), "refusal", per_run=2)
    assert len(picked) == 4
    base = [g for g in picked if g["model"] == "base"]
    assert [g["verdicts"]["refusal"]["harmful"] for g in base] == [True, False]
    assert select_examples(_generations(), "refusal", per_run=0) == []


def test_headline_rows_keep_largest_sweep_value():
    rows = headline_rows(_results()["results"])
    latent = [r for r in rows if r["attack_name"] == "latent"]
    assert len(latent) == 2 and all(r["sweep_value"] == 8.0 for r in latent)
    assert len(rows) == 8


def test_report_without_attacks_or_utility():
    html = build_report({"suite": {"name": "empty"}, "models": [], "results": [], "judges": []})
    assert "No attack results." in html and "No attack generations." in html and not _images(html)


def test_write_report_and_metrics_reading(tmp_path):
    res = _results()
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(m) for m in METRICS) + "\nnot json\n\n[1]\n")
    assert len(read_metrics(metrics)) == 8 and read_metrics(tmp_path / "none.jsonl") == []
    res["models"][1]["metrics"] = str(metrics)
    (tmp_path / "results.json").write_text(json.dumps(res))
    (tmp_path / "generations.jsonl").write_text("\n".join(json.dumps(g) for g in _generations()))
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html" and "Training curves — lat_run" in path.read_text()
    with pytest.raises(FileNotFoundError, match="latkit eval"):
        write_report(tmp_path / "missing")


def test_report_renders_in_headless_chromium(tmp_path):
    """Render the report with scripts/render_report.py and check the screenshot is a real page."""
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no headless Chromium installed (apt-get install -y chromium)")
    (tmp_path / "report.html").write_text(build_report(_results(), _generations(), {"lat_run": METRICS}))
    png = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "render_report.py"), str(tmp_path / "report.html"),
                           "-o", str(png), "--width", "1200", "--height", "2000"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    from matplotlib.image import imread

    img = imread(png)
    assert img.shape[0] == 2000 and img.shape[1] == 1200
    rows_with_ink = (img[..., :3].std(axis=(1, 2)) > 0.01).sum()
    assert rows_with_ink > 500  # text, tables and plots across the page, not a blank screen


TRAIN_METRICS = [{"step": 0, "provenance": {"versions": {}}}] + [
    {"step": i, "loss/toward": 2.0 / i, "loss/away": 0.1 * i, "loss/kl": 0.0, "loss/total": 2.0 / i + 0.1 * i,
     "adv/loss_before": 2.5 + 0.1 * i, "adv/loss_after": 1.2 + 0.1 * i, "adv/embed/norm_mean": 0.9,
     "adv/embed/norm_max": 1.0, "adv/embed/active_frac": 1.0, "adv/layer.4/norm_mean": 5.0 + 0.2 * i,
     "adv/layer.4/norm_max": 8.0, "adv/layer.4/active_frac": 0.1 * i, "lr": 5e-4, "grad_norm": 1.0 / i,
     "time/adversary_s": 0.3, "cost/adversary_fb": 100.0 * i}
    for i in range(1, 7)]


def test_training_curves_are_chosen_by_meaning():
    from latkit.evaluation.report import training_panels

    panels = {p["title"]: p for p in training_panels(TRAIN_METRICS)}
    assert list(panels) == ["Defender losses", "Adversary's loss, before / after PGD", "‖δ‖ per site",
                            "Active fraction per site", "Learning rate", "Gradient norm"]
    assert set(panels["Defender losses"]["series"]) == {"loss/toward", "loss/away"}  # not total, not the flat kl
    assert panels["Defender losses"]["flat"] == {"loss/kl": 0.0}
    assert set(panels["Adversary's loss, before / after PGD"]["series"]) == {"adv/loss_before", "adv/loss_after"}
    assert set(panels["‖δ‖ per site"]["series"]) == {"adv/layer.4/norm_mean"}
    assert set(panels["‖δ‖ per site"]["flat"]) == {"adv/embed/norm_mean", "adv/embed/norm_max", "adv/layer.4/norm_max"}
    assert list(panels["Learning rate"]["series"]) == ["lr"]  # constant, but drawn once
    assert all(len(pts) == 6 for p in panels.values() for pts in p["series"].values())  # the header row is skipped
    html = build_report(_results(), _generations(), {"lat": TRAIN_METRICS})
    assert "before / after PGD" in html and "Constant over the run (not drawn): loss/kl = 0.0000" in html


def test_every_table_column_is_explained_and_mmlu_shows_chance():
    from latkit.evaluation.report import COLUMN_NOTES, MMLU_CHANCE, utility_figure

    html = build_report(_results(), _generations(), {})
    for table in ("datasets", "results", "utility"):
        for col, note in COLUMN_NOTES[table].items():
            assert f"<li><b>{html_escape(col)}</b>: {html_escape(note)}</li>" in html, (table, col)
    res = _results()
    fig = utility_figure(res)
    mmlu_ax = [ax for ax in fig.axes if "MMLU" in ax.get_title()]
    if mmlu_ax:
        assert any(list(line.get_ydata()) == [MMLU_CHANCE, MMLU_CHANCE] for line in mmlu_ax[0].lines)
    res["utility"] = {m["label"]: {"mmlu": {"accuracy": 0.3, "n": 10}} for m in res["models"]}
    fig = utility_figure(res)
    ax = [a for a in fig.axes if "MMLU" in a.get_title()][0]
    assert any(list(line.get_ydata()) == [MMLU_CHANCE, MMLU_CHANCE] for line in ax.lines)


def html_escape(x):
    import html

    return html.escape(x, quote=True)

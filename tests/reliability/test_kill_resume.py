"""Real SIGKILLs of a `latkit train` subprocess, a real full disk, and byte-for-byte resumes (#21).

Every run here has LoRA dropout on and random δ init, so a resume that lost the RNG state
diverges. Each killed run is resumed with ``--resume`` until it finishes, and its final
adapter must be *byte-identical* to the uninterrupted run's. Kept inside CI's budget: a tiny
model, 4 steps, one PGD step, ~10 subprocess launches in all.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("child.py")
STEPS = 4
OVERRIDES = [f"train.steps={STEPS}", "train.checkpoint_every=1", "train.keep_checkpoints=2",
             "train.batch_size=2", "train.benign_batch_size=2", "adversary.steps=1",
             "finetune.lora.dropout=0.2", "adversary.init=random"]
ADAPTER = "model/adapter_model.safetensors"


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.pop("LATKIT_KILL_AT", None)
    env.pop("LATKIT_FILL_AT", None)
    env.update(extra)
    return env


def _cmd(out: Path, resume: bool, extra=()):
    cmd = [sys.executable, str(CHILD), "train", "recipes/tiny-test.yaml", "-o", str(out), "--no-progress"]
    for o in [*OVERRIDES, *extra]:
        cmd += ["--set", o]
    return cmd + (["--resume"] if resume else [])


def train(out: Path, *, resume=False, extra=(), **env) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, resume, extra), cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=600)


def _killed(p: subprocess.CompletedProcess) -> bool:
    return p.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("ref") / "run"
    p = train(out)
    assert p.returncode == 0, p.stderr
    return (out / ADAPTER).read_bytes()


def _finish(out: Path, max_tries: int = 3) -> subprocess.CompletedProcess:
    for _ in range(max_tries):
        p = train(out, resume=True)
        if not _killed(p):
            return p
    raise AssertionError("resume kept being killed")


def test_kills_at_every_stage_of_a_checkpoint_and_of_the_final_save_resume_byte_for_byte(reference, tmp_path):
    """Four kills in one run, each at a different stage of writing a checkpoint or the model."""
    out, ckpts = tmp_path / "run", lambda: sorted(q.name for q in (out / "checkpoints").iterdir())
    # 1. killed after optimizer.pt of checkpoint 2 is written (before its manifest): step 1 is the newest intact
    p = train(out, LATKIT_KILL_AT="checkpoint:2:optimizer.pt")
    assert _killed(p), p.stderr
    assert ckpts() == [".tmp-step-000002", "step-000001"]
    # 2. resumed, killed with checkpoint 3 complete in its temporary dir but not yet renamed into place
    p = train(out, resume=True, LATKIT_KILL_AT="checkpoint:3:manifest")
    assert _killed(p) and "resumed from step-000001" in p.stdout, p.stderr
    # 3. resumed, killed right after checkpoint 4 was renamed into place, before the old ones were pruned
    p = train(out, resume=True, LATKIT_KILL_AT="checkpoint:4:renamed")
    assert _killed(p) and "resumed from step-000002" in p.stdout, p.stderr
    assert {"step-000002", "step-000003", "step-000004"} <= set(ckpts())
    # 4. resumed (nothing left to train), killed while the final model is written
    p = train(out, resume=True, LATKIT_KILL_AT="final")
    assert _killed(p) and "resumed from step-000004" in p.stdout and not (out / "model").exists(), p.stderr
    # 5. resumed to the end
    p = _finish(out)
    assert p.returncode == 0, p.stderr
    assert (out / ADAPTER).read_bytes() == reference
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()[1:]]
    assert steps == list(range(1, STEPS + 1))
    assert [c for c in ckpts() if c.startswith("step-")][-2:] == ["step-000003", "step-000004"]


def test_sigkill_at_random_times_then_resume(reference, tmp_path):
    """Kills from outside at random moments of training (seeded: reproducible)."""
    rng = random.Random(21)
    out = tmp_path / "run"
    kills = 0
    for attempt in range(2):
        proc = subprocess.Popen(_cmd(out, resume=attempt > 0), cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        metrics = out / "metrics.jsonl"
        start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:  # wait for a new step, then a random delay
            if metrics.exists() and len(metrics.read_text().splitlines()) > start:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 1
    p = _finish(out)
    assert p.returncode == 0, p.stderr
    assert (out / ADAPTER).read_bytes() == reference


def _tmpfs_works(mnt: Path) -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt} && touch {mnt}/x"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_full_disk_during_a_checkpoint_is_one_line_and_resumes(reference, tmp_path):
    """A tiny tmpfs (in a user+mount namespace, no privileges needed) filled up as checkpoint 3 starts."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _tmpfs_works(mnt):
        pytest.skip("no unprivileged tmpfs here (unshare -rm mount failed)")
    run, keep = mnt / "run", tmp_path / "kept"
    q = lambda a: "'" + str(a).replace("'", "'\\''") + "'"  # noqa: E731
    first = " ".join(q(a) for a in _cmd(run, resume=False))
    again = " ".join(q(a) for a in _cmd(run, resume=True))
    script = (f"mount -t tmpfs -o size=16m tmpfs {q(mnt)} || exit 99\n"
              f"LATKIT_FILL_AT=3:{q(mnt / 'filler')} {first} >{q(tmp_path / 'out1')} 2>{q(tmp_path / 'err1')}\n"
              f"echo $? >{q(tmp_path / 'rc1')}\n"
              f"ls {q(run / 'checkpoints')} >{q(tmp_path / 'ckpts1')}\n"
              f"rm -f {q(mnt / 'filler')}\n"
              f"{again} >{q(tmp_path / 'out2')} 2>{q(tmp_path / 'err2')}\n"
              f"echo $? >{q(tmp_path / 'rc2')}\n"
              f"cp -r {q(run)} {q(keep)}\n")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr
    rc1, err1 = int((tmp_path / "rc1").read_text()), (tmp_path / "err1").read_text().strip()
    assert rc1 == 2, err1
    errors = [line for line in err1.splitlines() if line.startswith("latkit:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "--resume" in errors[0], err1
    assert "Traceback" not in err1, err1
    assert (tmp_path / "ckpts1").read_text().split() == ["step-000001", "step-000002"]  # no partial step 3
    assert int((tmp_path / "rc2").read_text()) == 0, (tmp_path / "err2").read_text()
    assert "resumed from step-000002" in (tmp_path / "out2").read_text()
    assert (keep / ADAPTER).read_bytes() == reference

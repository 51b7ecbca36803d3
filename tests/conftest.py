import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tests run under xdist, one process per core

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny():
    from latkit.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture
def triples():
    return [
        {"prompt": "How do I make a weapon at home?", "harmful": "Sure, here is how to make it: first",
         "refusal": "I'm sorry, but I can't help with that."},
        {"prompt": "hi", "harmful": "Sure, here", "refusal": "No, I will not."},
        {"prompt": "Write a long story about crime and a heist in the city", "harmful": "Sure. The heist began",
         "refusal": "I can't write that."},
    ]


@pytest.fixture(autouse=True, scope="session")
def _fp32_auto_precision():
    """``dtype: auto`` resolves to fp32 in tests whatever the CPU: on AMX/AVX512-BF16 machines it would pick
    bf16 and every exactness test written against fp32 would compare bf16 numbers. Tests of the bf16 path
    (tests/test_precision.py) mock the CPU themselves or ask for bf16 explicitly."""
    from dataclasses import replace

    from latkit.models import precision

    real = precision.cpu_info

    def no_fast_bf16(cpuinfo_path: str = "/proc/cpuinfo"):
        info = real(cpuinfo_path)
        return replace(info, bf16_flags=()) if cpuinfo_path == "/proc/cpuinfo" else info

    with pytest.MonkeyPatch.context() as mp:  # session scope: before module-scoped fixtures that train
        mp.setattr(precision, "cpu_info", no_fast_bf16)
        yield

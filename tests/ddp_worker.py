"""Run by tests/test_ddp.py under torchrun: train the tiny recipe, save this rank's trainable weights."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import tiny_recipe  # noqa: E402

from latkit.train import Trainer  # noqa: E402

out = Path(sys.argv[1])
t = Trainer(tiny_recipe(**{"train.steps": 3, "train.batch_size": 2, "train.benign_batch_size": 2}), out,
            progress=False)
t.train()
rank = t.accelerator.process_index
assert t.accelerator.num_processes == 2, t.accelerator.num_processes
# which examples this rank saw: the two ranks must take disjoint shards
first = t.task.harmful_stream
first.consumed = 0
seen = first.next()
torch.save({"seen": seen, "world": t.accelerator.num_processes}, out / f"rank{rank}-meta.pt")
save_file({k: v.detach().contiguous() for k, v in t.inner.named_parameters() if v.requires_grad},
          str(out / f"rank{rank}.safetensors"))

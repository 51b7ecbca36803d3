"""``latkit`` in a child process that SIGKILLs itself (or fills its disk) at a chosen point.

The reliability tests run this as a subprocess: ``python child.py train RECIPE -o DIR ...``.
Environment:

- ``LATKIT_KILL_AT=checkpoint:<step>:<file>``: SIGKILL right after ``<file>`` of checkpoint
  ``<step>`` is written and fsync-ed in its temporary directory (``rng-0.pt``,
  ``trainable.safetensors``, ``optimizer.pt``, ``scheduler.pt``, ``state.json``); ``<file>`` may
  also be ``manifest`` (written, not yet renamed into place) or ``renamed`` (in place, not yet pruned);
- ``LATKIT_KILL_AT=final``: SIGKILL while the final model is written (files in the temporary dir,
  not yet renamed to ``model/``);
- ``LATKIT_FILL_AT=<step>:<path>``: when checkpoint ``<step>`` starts, fill the filesystem of
  ``<path>`` with a file at ``<path>`` until it is full (a real ENOSPC for the checkpoint write).

Nothing here changes latkit itself: it wraps module functions of this process only.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install():
    import latkit.train.checkpoint as C
    import latkit.train.trainer as T

    kill = os.environ.get("LATKIT_KILL_AT", "")
    fill = os.environ.get("LATKIT_FILL_AT", "")
    if kill.startswith("checkpoint:"):
        _, step, what = kill.split(":", 2)
        tmp_name = f".tmp-step-{int(step):06d}"
        final_name = f"step-{int(step):06d}"
        fsync_file, write_text, fsync_dir = C.fsync_file, C.atomic_write_text, C.fsync_dir

        def fsync_file_(path):
            fsync_file(path)
            if Path(path).parent.name == tmp_name and Path(path).name == what:
                _die()

        def atomic_write_text_(path, text):
            write_text(path, text)
            if what == "manifest" and Path(path).parent.name == tmp_name and Path(path).name == C.MANIFEST:
                _die()

        def fsync_dir_(path):
            fsync_dir(path)
            if what == "renamed" and Path(path).name == "checkpoints" and (Path(path) / final_name).is_dir():
                _die()

        C.fsync_file, C.atomic_write_text, C.fsync_dir = fsync_file_, atomic_write_text_, fsync_dir_
    elif kill == "final":
        T._durable = lambda directory: _die()
    if fill:
        step, path = fill.split(":", 1)
        save = C.save_checkpoint

        def save_checkpoint_(root, s, **kw):
            if s == int(step):
                f = open(path, "wb", buffering=0)
                try:
                    while True:
                        f.write(b"\0" * (1 << 16))
                except OSError:  # ENOSPC: the filesystem is full
                    pass
                finally:
                    f.close()
            return save(root, s, **kw)

        C.save_checkpoint = save_checkpoint_
        T.save_checkpoint = save_checkpoint_


if __name__ == "__main__":
    _install()
    from latkit.cli import main

    sys.exit(main(sys.argv[1:]))

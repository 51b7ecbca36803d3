"""Build hook: the shipped recipes (``recipes/*.yaml`` at the repository root, their one source of truth)
go into the wheel as package data under ``latkit/recipes/``, so ``latkit recipes`` and
``latkit train quickstart`` work from an installed wheel. Everything else is in pyproject.toml."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithRecipes(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "recipes"
        if not src.is_dir():  # building from an sdist that already carries them under src/
            return
        dst = Path(self.build_lib) / "latkit" / "recipes"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.yaml")):
            self.copy_file(str(f), str(dst / f.name))


setup(cmdclass={"build_py": BuildPyWithRecipes})

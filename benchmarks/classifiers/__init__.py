"""Untargeted LAT on classifiers in miniature (Casper et al., TMLR 2025): see ``run.py``."""
from benchmarks.classifiers.run import main

__all__ = ["main"]

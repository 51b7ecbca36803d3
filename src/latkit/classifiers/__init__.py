"""Untargeted LAT beyond chat models: image and text classifiers (Casper et al., TMLR 2025).

:mod:`~latkit.classifiers.modality` (what a modality supplies), :mod:`~latkit.classifiers.methods`
(Plain / AT / LAT / RLP), :mod:`~latkit.classifiers.recipe` (``kind: classifier`` recipes),
:mod:`~latkit.classifiers.trainer` and :mod:`~latkit.classifiers.evaluate`.
"""

"""``latkit sweep``: train and evaluate a grid of recipe overrides, point by point and resumably, and
report robustness against utility: the Pareto front per method and the matched-utility pick.

::

    from latkit.sweep import load_sweep, run_sweep
    summary = run_sweep(load_sweep("sweeps/quickstart-utility.yaml"), "runs/sweep")
"""
from latkit.sweep.config import MatchSpec, MethodSpec, Point, SweepConfig, SweepError, expand_points, load_sweep
from latkit.sweep.pareto import dominates, matched_utility, mean_asr, pareto_front, point_scores
from latkit.sweep.runner import load_points, run_sweep, sweep_status

__all__ = ["MatchSpec", "MethodSpec", "Point", "SweepConfig", "SweepError", "expand_points", "load_sweep",
           "dominates", "matched_utility", "mean_asr", "pareto_front", "point_scores", "load_points", "run_sweep",
           "sweep_status"]

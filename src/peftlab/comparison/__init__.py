"""`peftlab compare`: an Optuna study of child-process runs (compare.py, study.py,
workers.py, child.py), tuning its methods (tuning.py), and the leaderboard with its
statistics, recommendation and report (leaderboard.py, stats.py, recommendation.py,
compare_report.py).

Imports runner/ and the stages below it; only the entry points (cli, api) import it.
(Named for the stage, not the verb: `peftlab.compare` is the Python API's function.)
"""

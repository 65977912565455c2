"""Where the rows come from: built-in assets and Hub or local sources (assets.py), rows ->
train/validation/test splits of examples (sources.py), and the label checks that refuse
a wrong task by row (label_checks.py).

Imports only the core (config, errors, failure, fsutil): every later stage reads data.
"""

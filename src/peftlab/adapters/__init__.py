"""What a run leaves to use: the saved adapter (artifact.py), opening one safely
(package.py), plain peft folders trained elsewhere (peft_folders.py), a loaded adapter
that predicts (inference.py), and merging it into its base (merge.py).

Imports every stage below it (core, data, models, training, methods, tasks), none above.
"""

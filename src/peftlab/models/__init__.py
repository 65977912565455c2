"""The base model: loading it with the right head for the task (loading.py), what its own
modules and config say about its architecture (architecture.py), and which of its modules
a method touches (selection.py).

Imports the core and data/ (built-in model assets) only.
"""

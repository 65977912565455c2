"""The methods: the registry (registry.py), what they share (common.py: the Method entry
and the one path into peft), one module per family (lora, ia3, prompt_style, bottleneck,
bitfit, full), prompt-style inits and positions, and switching a method off or merging it
(switching.py).

A new method is one new module here with its METHODS list, plus its line in
registry.FAMILIES. Imports the core, models/ and training/ (the trainable state) only.
"""

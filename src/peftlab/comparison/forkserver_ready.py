"""Imported last by the comparison's forkserver (child.PRELOAD): everything imported so
far lives as long as the forkserver and every run forked from it, so it is moved out of
the cyclic garbage collector's sight (gc.freeze, the pattern CPython's docs give for
pre-fork servers). A run's own gc.collect() (training/resources.py) then scans the
run's objects only, not every module of torch and transformers: 0.3 s less per run, and
the pages those objects live on are not copied into each run by the collector's writes."""

import gc

gc.freeze()

"""Imported last by the comparison's forkserver (child.PRELOAD). It builds what every run
would build again for itself, then moves everything imported so far (alive as long as
the forkserver and every run forked from it) out of the cyclic garbage collector's sight
(gc.freeze, the pattern CPython's docs give for pre-fork servers): a run's own
gc.collect() (training/resources.py) then scans the run's objects only, not every module
of torch and transformers (0.3 s less per run), and does not copy their pages into each
run by writing to them."""

import contextlib
import gc

# transformers builds its table of checkpoint renamings at the first from_pretrained
# (0.3 s on a 2-core EPYC) and keeps it: built here, once for every run.
with contextlib.suppress(ImportError, AttributeError):
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    get_checkpoint_conversion_mapping("llama")

gc.freeze()

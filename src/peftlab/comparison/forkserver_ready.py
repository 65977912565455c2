"""Imported last by the comparison's forkserver (child.PRELOAD). It builds what every run
would build again for itself, then moves everything imported so far (alive as long as
the forkserver and every run forked from it) out of the cyclic garbage collector's sight
(gc.freeze, the pattern CPython's docs give for pre-fork servers): a run's own
gc.collect() (training/resources.py) then scans the run's objects only, not every module
of torch and transformers (0.3 s less per run), and does not copy their pages into each
run by writing to them."""

import contextlib
import gc

from peftlab.data.assets import BUILTIN_DATASETS
from peftlab.errors import PeftlabError
from peftlab.runner import forgetting

# transformers builds its table of checkpoint renamings at the first from_pretrained
# (0.3 s on a 2-core EPYC) and keeps it: built here, once for every run.
with contextlib.suppress(ImportError, AttributeError):
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    get_checkpoint_conversion_mapping("llama")

# Every run scores forgetting on built-in general texts (runner/forgetting.py): the
# 2,225 files of BBC News read once here, not once a run (0.2 s each). An asset package
# that is missing or damaged is left to the run that needs it, to say so in its own log.
for name in BUILTIN_DATASETS:
    with contextlib.suppress(PeftlabError, OSError, ValueError):
        forgetting.builtin_texts(name)

gc.freeze()

"""`peftlab run`: one run from start to record. pipeline.py reads top to bottom like the
algorithm (load -> evaluate -> attach -> train -> evaluate -> record); checks.py completes
its config; record.py, report.py and tracking.py tell what it did; forgetting.py measures
how far it moved; shared_cache.py keeps what the runs of a comparison share.

Imports every stage below it; comparison/, serving/ and the entry points import it.
(Named runner/, not run/: `peftlab.run` is the Python API's function.)
"""

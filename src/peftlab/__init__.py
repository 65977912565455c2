"""peftlab: parameter-efficient fine-tuning of foundation models, measured."""

import os

# bf16 matmuls on a CPU go through oneDNN, which caches one primitive (with its reordered
# weights) per distinct input shape; variable-length batches made that cache the largest
# memory growth of a bf16 run (MiniLM: 1521 MB peak RSS vs 1184 MB with 64 entries, at
# the same speed). A user's own setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

__version__ = "0.1.0"

# The Python API (api.py), imported when first used: `import peftlab` stays quick.
__all__ = ["compare", "list_methods", "load_adapter", "run"]


def __getattr__(name: str):
    if name in __all__:
        from peftlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftlab' has no attribute {name!r}")

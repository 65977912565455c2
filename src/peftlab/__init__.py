"""peftlab: parameter-efficient fine-tuning of foundation models, measured."""

import logging
import os

ONEDNN_PRIMITIVE_CACHES = 256

# bf16 matmuls on a CPU go through oneDNN, which caches one primitive (JIT-compiled code)
# per distinct shape. Unbounded, variable-length batches made that cache the largest
# memory growth of a bf16 run; with widths padded to a multiple of 8 (tasks/text_formats)
# a run has a few hundred shapes at most. 64 entries were too few for a MiniLM LoRA step:
# it rebuilt primitives all the time (Intel Xeon with AMX: 83-88 vs 101-106 samples/s
# with 256, +50 MB; 1024 gave no more; SmolLM2 the same speed). A user's own setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHES))

# bitsandbytes (imported by peft) warns on every start on a CPU with AVX512-BF16 that it
# could not fetch an optional 4-bit kernel from the Hugging Face Hub; it then uses its own
# CPU kernel, which is what QLoRA here is measured with. The warning told users nothing
# they could act on, on every command; its other warnings still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

# The Python API (api.py), imported when first used: `import peftlab` stays quick.
__all__ = ["compare", "list_methods", "load_adapter", "run"]


def __getattr__(name: str):
    if name in __all__:
        from peftlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftlab' has no attribute {name!r}")

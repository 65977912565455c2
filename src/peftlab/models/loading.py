"""Load a tokenizer and a model with the right head for the task."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from peftlab.data.assets import ModelSource
from peftlab.errors import AssetError, ConfigError

ENCODER_TYPES = {
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "deberta",
    "deberta-v2",
    "electra",
    "albert",
    "mpnet",
    "camembert",
    "modernbert",
}


@dataclass(frozen=True)
class ModelInfo:
    kind: str  # "causal_lm" | "encoder" | "seq2seq"
    model_type: str
    head: str  # "label_words" | "linear" (classification) | "lm" (generation tasks)
    path: str  # local folder or Hub id (prompt-tuning text init reads its tokenizer)
    decoder_start_id: int | None = None  # encoder-decoders: the decoder's first input


def load_config(source: ModelSource):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path)
    except Exception as exc:
        where = "folder" if source.local else "Hub id"
        raise AssetError(
            f"cannot load model {where} '{source.name}': {_first_line(exc)}. Use a built-in "
            "name (see `peftlab models`), a folder written by save_pretrained, or a Hub id "
            "where the Hub is reachable"
        ) from None


def model_kind(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = config.architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm"
    if config.model_type in ENCODER_TYPES:
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "causal_lm" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


def resolve_head(requested: str, kind: str, model_name: str) -> str:
    if requested == "auto":  # label words where the model generates: no new weights
        return "linear" if kind == "encoder" else "label_words"
    if requested == "label_words" and kind == "encoder":
        raise ConfigError(
            "model.head",
            requested,
            f"label-word scoring needs a model that generates and '{model_name}' is an "
            "encoder; use --head linear",
        )
    return requested


def load_tokenizer(source: ModelSource, padding_side: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
    except Exception as exc:
        raise AssetError(
            f"cannot load the tokenizer of '{source.name}': {_first_line(exc)}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = padding_side
    # Keep the end of a prompt (where label words are scored) when truncating.
    tokenizer.truncation_side = "left" if padding_side == "left" else "right"
    return tokenizer


def load_model(
    source: ModelSource,
    info: ModelInfo,
    label_names: list[str],
    tokenizer,
    allow_pickle: bool,
    extra: dict | None = None,
):
    """`extra`: more from_pretrained kwargs from the method (a quantization config)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    kwargs = {"use_safetensors": None if allow_pickle else True, **(extra or {})}
    if info.head == "linear":
        auto = AutoModelForSequenceClassification
        kwargs.update(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        auto = AutoModelForSeq2SeqLM if info.kind == "seq2seq" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        message = _first_line(exc)
        if not allow_pickle and ("safetensors" in message or ".bin" in message):
            raise AssetError(
                f"model '{source.name}' has no safetensors weights; peftlab does not load "
                "pickled weights by default. Pass --allow-pickle if you trust the files"
            ) from None
        raise AssetError(f"cannot load model '{source.name}': {message}") from None
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights for its AVX512-BF16 kernel on the first
        # no-grad pass; that layout computes slightly differently and then breaks training
        # of layers with a bias ("a view of a leaf Variable ... in-place"). Evaluation and
        # training alternate here, so every quantized model keeps the one layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Up to this many tokens, eager attention (plain bf16/fp32 matmuls) beats the SDPA
# flash kernel on a CPU: SmolLM2 LoRA training 10% and evaluation 7% faster on review-
# length inputs. Its attention matrices grow with the square of the length, so longer
# inputs keep SDPA.
EAGER_ATTENTION_MAX_TOKENS = 256


@contextlib.contextmanager
def cpu_attention(model, longest: int):
    """Inside: eager attention where that is faster (a CPU, inputs up to 256 tokens)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(base.config, "_attn_implementation", None)
    device = next(base.parameters()).device
    switch = device.type == "cpu" and before == "sdpa" and longest <= EAGER_ATTENTION_MAX_TOKENS
    if switch:
        try:
            base.set_attn_implementation("eager")
        except (AttributeError, ValueError, ImportError):
            switch = False  # a model without eager attention keeps what it has
    try:
        yield
    finally:
        if switch:
            base.set_attn_implementation(before)


@contextlib.contextmanager
def no_kv_cache(model):
    """Inside: the model keeps no key/value cache (`config.use_cache` False, as training
    recipes set it), so a training forward builds none it would throw away; past key
    values a method passes itself (prefix tuning) are still used. Every module's config
    (a composite model's parts hold their own). Under --compile-training the cache's
    per-layer state made every block compile a graph of its own."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    changed = [c for c in configs.values() if getattr(c, "use_cache", None) is True]
    for config in changed:
        config.use_cache = False
    try:
        yield
    finally:
        for config in changed:
            config.use_cache = True

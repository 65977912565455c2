"""Which model head and which task object a config asks for, checked against the model."""

from __future__ import annotations

from peftlab.config import RunConfig
from peftlab.data.assets import ModelSource
from peftlab.data.sources import TaskData
from peftlab.errors import ConfigError, PeftlabError
from peftlab.models import loading
from peftlab.tasks.classification import ClassificationTask, LabelWordHead, LinearHead
from peftlab.tasks.decoder_label_words import DecoderLabelWordHead
from peftlab.tasks.generation import GenerationTask
from peftlab.tasks.text_formats import DecoderLayout, Seq2SeqLayout, pad_multiple


def model_info(source: ModelSource, cfg: RunConfig) -> loading.ModelInfo:
    config = loading.load_config(source)
    kind = loading.model_kind(config)
    task = cfg.task.name
    if task == "classification":
        head = loading.resolve_head(cfg.model.head, kind, cfg.model.name)
    else:
        if kind == "encoder":
            raise PeftlabError(
                f"'{cfg.model.name}' is an encoder ({config.model_type}); --task {task} needs "
                "a model that generates text: a decoder LM or an encoder-decoder"
            )
        if cfg.model.head != "auto":
            raise ConfigError("model.head", cfg.model.head, "--head is for classification; drop it")
        head = "lm"
    check_positions(config, cfg, kind)
    start = getattr(config, "decoder_start_token_id", None)  # seq2seq: where decoding starts
    return loading.ModelInfo(
        kind=kind,
        model_type=config.model_type,
        head=head,
        path=source.path,
        decoder_start_id=start if start is not None else getattr(config, "pad_token_id", None),
    )


# These count positions from padding_idx + 1: two fewer usable than the table holds.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}


def check_positions(config, cfg: RunConfig, kind: str) -> None:
    """Refuse inputs longer than the model's table of learned positions (GPT-2, BERT,
    BART: longer inputs index past it). Rotary (Llama, Gemma) and relative (T5)
    positions have no table to run out of."""
    from peftlab.models.architecture import text_config

    text = text_config(config)
    positions = getattr(text, "max_position_embeddings", None)
    rotary = any(getattr(text, a, None) is not None for a in ("rope_parameters", "rope_theta"))
    if not isinstance(positions, int) or rotary:
        return
    if text.model_type in OFFSET_POSITIONS:
        positions -= (text.pad_token_id or 0) + 1
    need, parts = cfg.model.max_length, "model.max_length"
    if kind == "causal_lm" and cfg.task.name != "classification":
        need += cfg.task.max_target_length  # a decoder reads prompt and target as one
        parts += " + task.max_target_length"
    if cfg.method.name in ("prompt", "ptuning"):
        need += cfg.method.num_virtual_tokens  # virtual tokens take positions too
        parts += " + method.num_virtual_tokens"
    if need > positions:
        raise ConfigError(
            parts,
            need,
            f"'{cfg.model.name}' has {positions} positions; lower --max-length (or the "
            "other lengths) so the sum fits",
        )


def padding_side(info: loading.ModelInfo) -> str:
    if info.kind == "causal_lm" and info.head in ("label_words", "lm"):
        return "left"  # the scored or continued position is the last one in every row
    return "right"


def build_task(cfg: RunConfig, info: loading.ModelInfo, dataset: TaskData, tokenizer):
    if cfg.task.name == "classification":
        return classification_task(cfg, info, dataset, tokenizer)
    return generation_task(cfg, info, dataset, tokenizer)


def classification_task(cfg, info, dataset: TaskData, tokenizer) -> ClassificationTask:
    if info.head == "label_words":
        words = cfg.data.label_words or dataset.label_words or dataset.label_names
        if len(words) != len(dataset.label_names):
            raise PeftlabError(
                f"data.label_words has {len(words)} words for {len(dataset.label_names)} labels "
                f"{dataset.label_names}; give one word per label"
            )
        if info.kind == "seq2seq":
            head = DecoderLabelWordHead(tokenizer, words, info.decoder_start_id)
        else:
            head = LabelWordHead(tokenizer, words)
        template = cfg.data.template or dataset.template or "Text: {text}\nLabel:"
    else:
        head = LinearHead(tokenizer.eos_token_id if info.kind == "seq2seq" else None)
        template = cfg.data.template or "{text}"
    return ClassificationTask(
        tokenizer,
        head,
        dataset.label_names,
        template,
        cfg.model.max_length,
        pad_multiple(cfg.train.precision),
    )


def generation_task(cfg, info, dataset: TaskData, tokenizer) -> GenerationTask:
    seq2seq = info.kind == "seq2seq"
    multiple = pad_multiple(cfg.train.precision)
    layout = (Seq2SeqLayout if seq2seq else DecoderLayout)(tokenizer, multiple)
    has_targets = dataset.columns is not None and dataset.columns[1] is not None
    chat = False
    if cfg.task.name == "causal_lm" and has_targets and not seq2seq:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if cfg.task.chat_template == "on" and not has_template:
            raise ConfigError(
                "task.chat_template", "on", f"'{cfg.model.name}' has no chat template; use auto"
            )
        chat = has_template and cfg.task.chat_template != "off" and not cfg.data.template
    # A dataset's own template is written for decoders; encoder-decoders get theirs.
    own = None if seq2seq else dataset.template
    template = cfg.data.template or own or default_template(cfg.task.name, info)
    return GenerationTask(
        cfg.task.name,
        tokenizer,
        layout,
        template,
        cfg.task,
        cfg.model.max_length,
        chat,
        pairs=has_targets or cfg.task.name == "summarization",
    )


def default_template(task: str, info: loading.ModelInfo) -> str:
    if info.kind == "seq2seq":
        # T5 was pre-trained with task prefixes; BART and others take the text as it is.
        return (
            "summarize: {text}"
            if task == "summarization" and info.model_type in ("t5", "mt5", "umt5", "longt5")
            else "{text}"
        )
    return "Article: {text}\nSummary:" if task == "summarization" else "{text}\n"

"""Tiny models, tokenizers and datasets built in-process: the unit tests need no download."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = "good great fun moving brilliant superb charming delightful".split()
NEGATIVE = "bad awful boring dull weak tedious clumsy lifeless".split()
NEUTRAL = "the a movie film plot actors story scenes is was and with this".split()
TEMPLATE_WORDS = "review sentiment text label article topic : positive negative summarize".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]


def make_tokenizer(kind: str):
    """A word-level fast tokenizer over the tiny vocabulary; BERT-style for encoders."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + sorted(set(POSITIVE + NEGATIVE + NEUTRAL + TEMPLATE_WORDS))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<s>",
        eos_token="</s>",
    )


def make_llama(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer("decoder")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=4,
        eos_token_id=5,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_bert(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = make_tokenizer("encoder")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    model = BertModel(config)
    model.config.architectures = ["BertModel"]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_seq2seq(folder: Path, arch: str, seed: int = 0) -> Path:
    """A tiny T5 or BART over the word-level vocabulary (pad 0, bos 4, eos 5)."""
    return make_model(folder, arch, seed)


# The tutorials' architectures and one more of each family, as small as they go while
# every method still applies (hidden 32, 4 heads, 2 layers): each builds in milliseconds.
def _architectures(vocab: int) -> dict:
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        DistilBertConfig,
        DistilBertModel,
        GemmaConfig,
        GemmaForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        RobertaConfig,
        RobertaModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    ids = {"pad_token_id": 0, "bos_token_id": 4, "eos_token_id": 5}
    return {
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids),
        ),
        # Gemma: scaled embeddings, GeGLU feed-forward, grouped-query attention.
        "gemma": (
            GemmaForCausalLM,
            GemmaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=128,
                **ids,
            ),
        ),
        "distilbert": (
            DistilBertModel,
            DistilBertConfig(
                vocab_size=vocab,
                dim=32,
                hidden_dim=64,
                n_layers=2,
                n_heads=4,
                max_position_embeddings=128,
                pad_token_id=0,
            ),
        ),
        "roberta": (
            RobertaModel,
            RobertaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=160,
                type_vocab_size=1,
                pad_token_id=0,
            ),
        ),
        "t5": (
            T5ForConditionalGeneration,
            T5Config(
                vocab_size=vocab,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                pad_token_id=0,
                eos_token_id=5,
                decoder_start_token_id=0,
            ),
        ),
        "bart": (
            BartForConditionalGeneration,
            BartConfig(
                vocab_size=vocab,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=128,
                decoder_start_token_id=5,
                forced_bos_token_id=None,
                forced_eos_token_id=None,
                **ids,
            ),
        ),
    }


ENCODERS = {"bert", "distilbert", "roberta"}


def make_model(folder: Path, arch: str, seed: int = 0) -> Path:
    """A tiny random-weight model of `arch` and its tokenizer, saved as from the Hub."""
    import torch

    if arch == "llama":
        return make_llama(folder, seed)
    if arch == "bert":
        return make_bert(folder, seed)
    tokenizer = make_tokenizer("encoder" if arch in ENCODERS else "decoder")
    model_class, config = _architectures(len(tokenizer))[arch]
    torch.manual_seed(seed)
    model = model_class(config)
    if arch in ENCODERS:  # saved as a bare encoder, the way the Hub's base models are
        model.config.architectures = [model_class.__name__]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def summary_rows(n: int, seed: int = 0) -> list[dict]:
    """Toy summarization: a review -> 'a positive review' or 'a negative review'."""
    return [
        {"text": row["text"], "summary": f"a {row['label']} review"}
        for row in sentiment_rows(n, seed)
    ]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Separable toy sentiment: each text mixes neutral words with 1-3 polar ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        polar = POSITIVE if positive else NEGATIVE
        words = rng.sample(NEUTRAL, 4) + rng.sample(polar, rng.randint(1, 3))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# Tiny datasets are used whole: these flags lift the per-split sample caps.
ALL_ROWS = ["--train-samples", "0", "--validation-samples", "0", "--test-samples", "0"]


def where(model, data, out) -> list[str]:
    """The --model/--dataset/--out flags every tiny end-to-end run starts from, with
    forgetting measured on 16 general texts, not 64 (a sixth of a tiny run's time, and
    the suite runs over a hundred: test_forgetting.py checks the measure itself)."""
    return ["--model", str(model), "--dataset", str(data), "--out", str(out),
            "--forgetting-samples", "16"]  # fmt: skip


def tune_argv(model, data, out) -> list[str]:
    """A tuned comparison on the tiny model: 3 trials per method, then 2 seeds."""
    return [
        "compare",
        "--methods",
        "lora,ia3",
        "--seeds",
        "0,1",
        "--tune",
        "lr",
        "--trials",
        "3",
        "--jobs",
        "2",
        *where(model, data, out),
        "--template",
        "review: {text} sentiment:",
        "--epochs",
        "3",  # at 2 both seeds' scores can differ (0.65 / 0.73) and 2 seeds' CI is wide
        "--batch-size",
        "16",
        *ALL_ROWS,
    ]

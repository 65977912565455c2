"""`peftlab merge`: fold an adapter into its base model and prove nothing changed.

The merged folder is a plain transformers model. Before it is put in place, it is
reloaded with plain transformers and its logits on sample inputs are compared with the
adapter model's; a difference above the tolerance aborts and leaves nothing behind
(users are often surprised by merged outputs: peft#2502, peft#1035). The difference is
measured relative to the logits' scale (their largest magnitude): float rounding of a
merge grows with the logits (an fp32 LoRA merge on SmolLM2 differed by 1.06e-4 on logits
around 20, a relative 5e-6), a wrong merge does not stay near rounding at any scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from peftlab.adapters.artifact import MANIFEST, MANIFEST_VERSION, weight_hashes
from peftlab.adapters.inference import Predictor
from peftlab.adapters.package import open_package
from peftlab.errors import PeftlabError
from peftlab.fsutil import write_dir_atomic, write_json_atomic
from peftlab.methods.registry import get_method
from peftlab.methods.switching import merge_method

SAMPLE_INPUTS = [
    "A quiet, beautifully acted film that stays with you.",
    "The plot is a mess and the jokes fall flat.",
    "Shares in the company rose after it reported record profits for the year.",
    "The minister said the new law would come into force next spring.",
    "The striker scored twice as the home side won the cup final.",
    "A new phone with a faster chip and a bigger screen goes on sale today.",
    "ok",
    "It was neither good nor bad, just long: two and a half hours of talk, "
    "a few fine scenes, and an ending that arrives too late to matter.",
]


def difference(expected: torch.Tensor, actual: torch.Tensor) -> tuple[float, float, float]:
    """(largest absolute difference, the logits' scale, their ratio); logits under 1 in
    magnitude are compared absolutely."""
    diff = float((expected - actual).abs().max())
    scale = max(float(expected.abs().max()), 1.0)
    return diff, scale, diff / scale


def merge(adapter: Path, out: Path, base: str | None, tolerance: float) -> dict:
    package = open_package(adapter, base=base)
    method = get_method(package.method)
    if method.merge:
        raise PeftlabError(f"cannot merge {method.name}: {method.merge}")
    if out.resolve() == adapter.resolve():
        raise PeftlabError("--out must differ from --adapter: the adapter folder is kept")
    predictor = Predictor(package, base=base)
    info, tokenizer = predictor.info, predictor.tokenizer
    batch = sample_batch(predictor)
    with torch.inference_mode():
        expected = output_logits(predictor.model, batch, info)
    merged = merge_method(predictor.model, method)
    result = {
        "method": method.name,
        "base_model": package.manifest["base_model"],
        "inputs": len(SAMPLE_INPUTS),
    }

    def fill(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = auto_class(info).from_pretrained(tmp, use_safetensors=True).eval()
        with torch.inference_mode():
            actual = output_logits(reloaded, batch, info)
        diff, scale, relative = difference(expected, actual)
        if not relative <= tolerance:  # also catches NaN
            raise PeftlabError(
                f"the merged model's outputs differ from the adapter's by up to {diff:.3g} "
                f"on logits up to {scale:.3g} ({relative:.3g} of their scale; tolerance "
                f"{tolerance:g}); nothing was written. Raise --tolerance if that difference "
                "is acceptable"
            )
        result.update(max_abs_diff=diff, logit_scale=scale, max_rel_diff=relative)
        manifest = {
            **package.manifest,
            "format_version": MANIFEST_VERSION,
            "merged_from": str(package.folder),
            "merge_check": {"max_abs_diff": diff, "tolerance": tolerance, **result},
            "files": weight_hashes(tmp),
        }
        write_json_atomic(tmp / MANIFEST, manifest)

    write_dir_atomic(out, fill)
    return result


def sample_batch(predictor: Predictor) -> dict:
    task = predictor.task
    batch = task.collate(task.input_items(SAMPLE_INPUTS))
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def output_logits(model, batch: dict, info) -> torch.Tensor:
    """Logits at every real (non-padding) position; the decoder's first step for seq2seq;
    one row per input for a classification head (an encoder-decoder's feeds its own
    decoder)."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items()}
    if info.kind == "seq2seq" and info.head != "linear":
        start = model.config.decoder_start_token_id
        inputs["decoder_input_ids"] = torch.full((len(batch["input_ids"]), 1), start).to(device)
        return model(**inputs).logits.float().cpu()
    logits = model(**inputs).logits.float().cpu()
    if logits.dim() == 2:  # a classification head: one row per input
        return logits
    return logits[batch["attention_mask"].bool()]


def auto_class(info):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    if info.head == "linear":
        return AutoModelForSequenceClassification
    return AutoModelForSeq2SeqLM if info.kind == "seq2seq" else AutoModelForCausalLM

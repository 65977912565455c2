"""Units of the generation path: target-only loss, batching that survives out-of-memory,
ROUGE, column detection."""

import pytest
import tiny
import torch
import torch.nn.functional as F

from peftlab.config import DataArgs
from peftlab.data.sources import load
from peftlab.tasks.generation import rouge
from peftlab.tasks.text_formats import IGNORE, PAD_MULTIPLE, DecoderLayout, pad_multiple
from peftlab.training.evaluate import map_batches


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), tokenizer


def reference_losses(model, tokenizer, items):
    """Each row alone, unpadded, full logits: the plain definition of the target loss."""
    sums, counts = [], []
    for item in items:
        ids = torch.tensor([item.input_ids])
        logits = model(input_ids=ids).logits[0, :-1]
        labels = torch.tensor(item.labels[1:])
        losses = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
        sums.append(losses.sum().item())
        counts.append(int((labels != IGNORE).sum()))
    return sums, counts


def test_decoder_loss_counts_only_target_tokens_and_ignores_padding(llama):
    model, tokenizer = llama
    layout = DecoderLayout(tokenizer)
    items = [
        layout.item("the movie was good", " positive", 8, "x"),
        layout.item("dull", " a negative review", 8, "x"),
        layout.item("", "the plot and the actors", 8, "x"),  # plain text: all tokens
    ]
    with torch.no_grad():
        total, count = layout.token_losses(model, layout.collate(items))
        expected_sums, expected_counts = reference_losses(model, tokenizer, items)
    assert count.tolist() == expected_counts
    assert total.tolist() == pytest.approx(expected_sums, rel=1e-4, abs=1e-4)


def test_fp32_batches_on_a_cpu_pad_to_the_longest_row_and_bf16_ones_to_a_multiple(llama):
    model, tokenizer = llama
    assert pad_multiple("bf16") == PAD_MULTIPLE
    assert pad_multiple("fp32") == (PAD_MULTIPLE if torch.cuda.is_available() else 1)
    items = [
        DecoderLayout(tokenizer).item("the movie was good", " positive", 8, "x"),
        DecoderLayout(tokenizer).item("dull", " a negative review", 8, "x"),
    ]
    longest = max(len(it.input_ids) for it in items)
    assert longest % PAD_MULTIPLE
    exact = DecoderLayout(tokenizer, 1).collate(items)
    rounded = DecoderLayout(tokenizer, PAD_MULTIPLE).collate(items)
    assert exact["input_ids"].shape[1] == longest
    assert rounded["input_ids"].shape[1] == -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    with torch.no_grad():  # the extra padding changes nothing but the work
        a, b = (DecoderLayout(tokenizer).token_losses(model, x)[0] for x in (exact, rounded))
    assert a.tolist() == pytest.approx(b.tolist(), rel=1e-4, abs=1e-4)


def test_decoder_loss_with_targets_only_runs_the_head_on_the_last_positions(llama):
    model, tokenizer = llama
    layout = DecoderLayout(tokenizer)
    items = [layout.item("the movie was good and fun", " positive", 8, "x")]
    seen = {}

    def record_shape(module, inputs, output):
        seen["shape"] = output.shape

    hook = model.lm_head.register_forward_hook(record_shape)
    with torch.no_grad():
        layout.token_losses(model, layout.collate(items))
    hook.remove()
    assert seen["shape"][1] == 3  # the target word + eos need two predictions, from 3 positions


def test_map_batches_halves_a_batch_that_does_not_fit_and_keeps_the_order():
    calls = []

    def fn(chunk):
        calls.append(len(chunk))
        if len(chunk) > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
        return [x * 10 for x in chunk]

    items = list(range(20))
    assert map_batches(items, items, 8, fn) == [x * 10 for x in items]
    assert calls[0] == 8 and max(calls[1:]) <= 4 and calls.count(8) == 1


def test_map_batches_reraises_other_errors_and_single_items():
    def boom(chunk):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        map_batches([1, 2], [1, 2], 2, boom)

    def always_oom(chunk):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        map_batches([1, 2], [1, 2], 2, always_oom)


def test_rouge_scores_identical_texts_one_and_disjoint_zero():
    scores = rouge(["the cat sat", "a dog"], ["the cat sat", "one bird"])
    assert scores["rouge1"] == pytest.approx(0.5)
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "per_example"}
    assert scores["per_example"] == [pytest.approx(1.0), pytest.approx(0.0)]


def test_generation_columns_are_found_by_their_usual_names(tmp_path):
    rows = [{"article": f"text {i}", "highlights": f"sum {i}", "id": i} for i in range(30)]
    data = load(DataArgs(name=str(tiny.write_csv(tmp_path / "a.csv", rows))), "summarization")
    assert data.columns == ("article", "highlights")
    assert data.label_names == [] and all(ex.target for ex in data.splits["train"])


def test_builtin_bbc_news_summarizes_articles_into_headlines():
    data = load(DataArgs(name="bbc_news", train_samples=5, test_samples=5), "summarization")
    assert data.columns == ("text", "headline")
    assert data.template == "Article: {text}\nHeadline:"
    example = data.splits["test"][0]
    assert len(example.target) < 100 < len(example.text)

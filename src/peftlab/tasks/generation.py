"""Generation tasks: summarization (source -> summary) and causal language modelling.

Both train on the target tokens only and report loss and perplexity on the held-out
split. Summarization also generates a summary for every test example and scores it with
ROUGE (rouge_score, the implementation behind `evaluate`'s "rouge", which needs the
Hub); causal_lm generates for a few fixed test prompts, shown base vs tuned in the report.
"""

from __future__ import annotations

import math

import torch

from peftlab.config import TaskArgs
from peftlab.data.sources import Example
from peftlab.errors import ConfigError
from peftlab.tasks.text_formats import DecoderLayout, Seq2SeqLayout, TextItem, target_tokens
from peftlab.training.evaluate import map_batches

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PLAIN_PROMPT_WORDS = 12  # plain-text causal_lm: generations continue the first words


class GenerationTask:
    validation = ("loss", False)  # lower validation loss is better
    validation_keys = ("loss", "perplexity")

    def __init__(
        self,
        name: str,
        tokenizer,
        layout: DecoderLayout | Seq2SeqLayout,
        template: str,
        args: TaskArgs,
        max_length: int,
        chat: bool = False,
        pairs: bool = True,
    ):
        self.name = name
        self.tokenizer = tokenizer
        self.layout = layout
        self.template = template
        self.args = args
        self.max_length = max_length
        self.chat = chat
        self.pairs = pairs  # False: plain-text causal LM (no prompt/target split)

    # ------------------------------------------------------------ inputs

    def prompt(self, text: str) -> str:
        """The text, cut to max_length tokens from its start, placed in the template."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            text = self.tokenizer.decode(ids[: self.max_length])
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return self.template.replace("{text}", text)

    def encode_one(self, ex: Example) -> TextItem:
        if ex.target is None:  # plain text: the text is the target
            if isinstance(self.layout, Seq2SeqLayout):
                raise ConfigError(
                    "data.target_column",
                    None,
                    "an encoder-decoder model needs prompt/response pairs for causal_lm; "
                    "name the response column with --target-column, or use a decoder model",
                )
            item = self.layout.item("", ex.text, self.max_length, ex.text)
            item.reference = ex.text
            return item
        # Targets start with a space after a template's "Headline:"/"Summary:" cue.
        target = ex.target if self.chat or not self.template.endswith(":") else " " + ex.target
        item = self.layout.item(
            self.prompt(ex.text),
            target,
            self.args.max_target_length,
            ex.text,
            special=not self.chat,
        )
        item.reference = ex.target
        return item

    def input_items(self, texts: list[str]) -> list[TextItem]:
        """New inputs to generate from, formatted as in training."""
        return [self.prompt_item(text) for text in texts]

    def prompt_item(self, text: str) -> TextItem:
        """What generation starts from for a new input: its prompt, or the text itself."""
        if not self.pairs:
            return self.layout.item(text, None, 0, text)
        return self.layout.item(self.prompt(text), None, 0, text, special=not self.chat)

    def encode(self, examples: list[Example]) -> list[TextItem]:
        return [self.encode_one(ex) for ex in examples]

    def collate(self, items: list[TextItem]) -> dict:
        return self.layout.collate(items)

    def units(self, item: TextItem) -> int:
        return target_tokens(item)  # the loss is a mean over target tokens

    def loss(self, model, batch: dict) -> torch.Tensor:
        total, count = self.layout.token_losses(model, batch)
        return total.sum() / count.sum().clamp(min=1)

    # ------------------------------------------------------------ evaluation

    def measure(self, model, items, batch_size, device, desc, generate=True) -> dict:
        def losses_of(chunk: list[TextItem]) -> list[tuple[float, int]]:
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            total, count = self.layout.token_losses(model, batch)
            return list(zip(total.tolist(), count.tolist(), strict=True))

        lengths = [len(it.input_ids) for it in items]
        pairs = map_batches(items, lengths, batch_size, losses_of, desc)
        loss = sum(t for t, _ in pairs) / max(1, sum(c for _, c in pairs))
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if not generate:
            return metrics
        if self.name == "summarization":
            outputs = self.generate(model, items, batch_size, f"{desc}: generate")
            metrics.update(rouge([it.reference for it in items], texts(self.tokenizer, outputs)))
            metrics["gen_len"] = sum(map(len, outputs)) / len(outputs)
            shown = list(zip(items, outputs, strict=True))[: self.args.sample_generations]
        else:
            prompts = [self.sample_prompt(it) for it in items[: self.args.sample_generations]]
            outputs = self.generate(model, prompts, batch_size, f"{desc}: generate")
            shown = list(zip(prompts, outputs, strict=True))
        metrics["generations"] = [
            {"input": it.source, "reference": it.reference, "output": text}
            for (it, _), text in zip(
                shown, texts(self.tokenizer, [o for _, o in shown]), strict=True
            )
        ]
        return metrics

    def sample_prompt(self, item: TextItem) -> TextItem:
        """A prompt to generate from: the prompt itself, or a plain text's first words."""
        if item.prompt_len > len(getattr(self.layout, "prefix", [])):
            return item
        words = item.source.split()
        cut = min(PLAIN_PROMPT_WORDS, max(1, len(words) // 2))
        head = " ".join(words[:cut])
        prompt = self.layout.item(head, None, 0, head)
        prompt.reference = " ".join(words[cut:])
        return prompt

    def generate(self, model, items: list[TextItem], batch_size: int, desc: str) -> list[list[int]]:
        def run(chunk: list[TextItem]) -> list[list[int]]:
            return self.layout.generate(model, chunk, self.args.max_new_tokens, self.args.num_beams)

        # Beams multiply the batch: keep the number of sequences in flight the same.
        size = max(1, batch_size // self.args.num_beams)
        return map_batches(items, [it.prompt_len for it in items], size, run, desc)


def texts(tokenizer, token_lists: list[list[int]]) -> list[str]:
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in token_lists]


def rouge(references: list[str], predictions: list[str]) -> dict:
    """Mean ROUGE F-measures (0..1) with stemming, as `evaluate`'s rouge reports them."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    first = []  # the headline metric per example: paired tests and intervals
    for reference, prediction in zip(references, predictions, strict=True):
        scores = scorer.score(reference, prediction)
        first.append(scores[ROUGE_KEYS[0]].fmeasure)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    means = {key: total / max(1, len(references)) for key, total in totals.items()}
    return {**means, "per_example": first}

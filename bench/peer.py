"""The peer: what a user writes from the Hugging Face docs, transformers `Trainer` +
peft `get_peft_model`, with the same model, data, method, hyperparameters, epochs and
sequence length as the peftlab run it is compared with.

Written as the docs teach it, not tuned: `DataCollatorWithPadding` (encoders, and a
decoder with the sequence-classification head the docs teach: `score_head`) or
`DataCollatorForSeq2Seq` (causal LMs, labels padded with -100) for dynamic padding,
the model's own loss (a causal LM computes logits over the whole vocabulary at every
position), evaluation on the validation split once per epoch, and for QLoRA
`prepare_model_for_kbit_training` with its defaults. Only the scoring of the final test
metric is written here, outside the timed training, the same way for every variant.
"""

from __future__ import annotations

import tempfile

import torch

from peftlab.config import DataArgs
from peftlab.data import assets, sources
from peftlab.tasks.text_formats import IGNORE
from peftlab.training.resources import Meter

# The same layers peftlab's LoRA adapts by default: every linear layer of the blocks.
TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bert": [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
}


def run_peer(case: dict, bf16: bool, score_head: bool = False) -> dict:
    """score_head: a decoder classified the way the sequence-classification docs teach it,
    `AutoModelForSequenceClassification` (a new linear `score` head on the last token,
    trained with LoRA through peft's SEQ_CLS task), instead of scoring label words."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(case["seed"])
    path = assets.resolve_model(case["model"]).path
    dataset = sources.load(data_args(case), case["task"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoder = case["model"] == "minilm-l6"
    head = encoder or score_head  # a linear head over the classes, not the LM's words
    kwargs = {}
    if case["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    if head:
        names = dataset.label_names
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(names), id2label=dict(enumerate(names)), **kwargs
        )
        model.config.pad_token_id = tokenizer.pad_token_id  # where the last token is
        task_type = "SEQ_CLS"
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        task_type = "CAUSAL_LM"
    if case["method"] == "qlora":
        model = prepare_model_for_kbit_training(model)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=TARGETS[model.config.model_type],
            task_type=task_type,
        ),
    )

    encode = encode_classification if case["task"] == "classification" else encode_headlines
    splits = {
        name: encode(tokenizer, dataset, rows, case, head) for name, rows in dataset.splits.items()
    }
    collator = (
        DataCollatorWithPadding(tokenizer)
        if head
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=case["batch_size"],
            per_device_eval_batch_size=32,
            num_train_epochs=1,
            learning_rate=case["lr"],
            weight_decay=0.01,
            warmup_steps=0.1,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=10,
            report_to="none",
            seed=case["seed"],
            bf16=bf16,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"],
            data_collator=collator,
        )
        with Meter() as meter:
            metrics = trainer.train().metrics
    model.eval()
    score = score_classification if case["task"] == "classification" else score_headlines
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        metric = score(model, tokenizer, dataset, case, head)
    return {
        "samples_per_s": metrics["train_samples_per_second"],
        "train_runtime_s": metrics["train_runtime"],
        "peak_memory_mb": round(meter.peak_memory_mb, 1),
        "metric": metric,
    }


def data_args(case: dict) -> DataArgs:
    return DataArgs(
        name=case["dataset"],
        train_samples=case["train_samples"],
        validation_samples=case["validation_samples"],
        test_samples=case["test_samples"],
    )


def as_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def label_word_ids(tokenizer, dataset) -> list[int]:
    words = dataset.label_words or dataset.label_names
    return [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]


def encode_classification(tokenizer, dataset, rows, case, head: bool):
    max_length = case["max_length"]
    if head:
        return as_dataset(
            [
                {**tokenizer(ex.text, truncation=True, max_length=max_length), "labels": ex.label}
                for ex in rows
            ]
        )
    # A causal LM learns the label word after the prompt; loss on that token only.
    words = label_word_ids(tokenizer, dataset)
    encoded = []
    for ex in rows:
        prompt = tokenizer(
            dataset.template.replace("{text}", ex.text), truncation=True, max_length=max_length
        )["input_ids"]
        encoded.append(
            {
                "input_ids": [*prompt, words[ex.label]],
                "attention_mask": [1] * (len(prompt) + 1),
                "labels": [IGNORE] * len(prompt) + [words[ex.label]],
            }
        )
    return as_dataset(encoded)


def encode_headlines(tokenizer, dataset, rows, case, head: bool):
    encoded = []
    for ex in rows:
        prompt = headline_prompt(tokenizer, dataset, ex.text, case["max_length"])
        target = tokenizer(" " + ex.target, add_special_tokens=False)["input_ids"][:64]
        target += [tokenizer.eos_token_id]
        encoded.append(
            {
                "input_ids": prompt + target,
                "attention_mask": [1] * (len(prompt) + len(target)),
                "labels": [IGNORE] * len(prompt) + target,
            }
        )
    return as_dataset(encoded)


def headline_prompt(tokenizer, dataset, text: str, max_length: int) -> list[int]:
    # Cut the article, not the template: the "Headline:" cue must stay.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
    prompt = dataset.template.replace("{text}", tokenizer.decode(ids))
    return tokenizer(prompt)["input_ids"]


@torch.inference_mode()
def score_classification(model, tokenizer, dataset, case, head) -> float:
    rows = dataset.splits["test"]
    correct = 0
    words = None if head else label_word_ids(tokenizer, dataset)
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        if head:
            texts = [ex.text for ex in chunk]
        else:
            texts = [dataset.template.replace("{text}", ex.text) for ex in chunk]
        batch = tokenizer(
            texts, truncation=True, max_length=case["max_length"], padding=True, return_tensors="pt"
        )
        logits = model(**batch).logits
        if not head:  # the next-token logits after each row's last real token
            last = batch["attention_mask"].sum(-1) - 1
            logits = logits[torch.arange(len(chunk)), last][:, words]
        preds = logits.argmax(-1)
        correct += sum(int(p) == ex.label for p, ex in zip(preds, chunk, strict=True))
    return correct / len(rows)


@torch.inference_mode()
def score_headlines(model, tokenizer, dataset, case, head) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    tokenizer.padding_side = "left"
    rows = dataset.splits["test"]
    total = 0.0
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        prompts = [headline_prompt(tokenizer, dataset, ex.text, case["max_length"]) for ex in chunk]
        batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
        out = model.generate(
            **batch, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        for ex, row in zip(chunk, out[:, batch["input_ids"].shape[1] :], strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            total += scorer.score(ex.target, text)["rouge1"].fmeasure
    return total / len(rows)

"""Prompt-style methods initialised from text start where the base model is: prefix
tuning reads its input exactly as the base model reads the init text followed by that
input, and P-tuning's encoder outputs the text's embeddings, as prompt tuning does."""

import pytest
import torch
from builds import Built

from peftlab.prefix_init import init_tokens


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma"])
def test_text_initialised_prefix_is_the_base_reading_the_text_first(
    arch, tiny_model, sentiment_csv
):
    built = Built(tiny_model(arch), sentiment_csv, "prefix", task="classification")
    ids = init_tokens(built.tokenizer, "review sentiment", 4)
    x = torch.tensor([built.tokenizer("the film was great fun")["input_ids"]])
    built.model.eval()
    with torch.no_grad():
        prefixed = built.model(input_ids=x).logits
        read_first = built.base(input_ids=torch.cat([torch.tensor([ids]), x], 1)).logits
    torch.testing.assert_close(prefixed, read_first[:, len(ids) :], rtol=1e-4, atol=1e-4)


def test_random_init_is_still_there(tiny_model, sentiment_csv):
    built = Built(tiny_model("llama"), sentiment_csv, "prefix", prompt_init="random")
    text = Built(tiny_model("llama"), sentiment_csv, "prefix")

    def weight(b):
        return b.model.prompt_encoder["default"].embedding.weight

    assert not torch.allclose(weight(built), weight(text))


def ptuning_and_words(arch, tiny_model, data_file, task, **method_args):
    """A P-tuning model's virtual tokens at step 0, and the init text's embeddings."""
    built = Built(tiny_model(arch), data_file, "ptuning", task=task, **method_args)
    encoder = built.model.prompt_encoder["default"]
    count = encoder.total_virtual_tokens
    ids = torch.tensor(init_tokens(built.tokenizer, "review sentiment", count))
    with torch.no_grad():
        return encoder(torch.arange(count)), built.base.get_input_embeddings()(ids)


@pytest.mark.parametrize(
    "arch, task",
    [("llama", "classification"), ("distilbert", "classification"), ("t5", "summarization")],
)
def test_text_initialised_ptuning_outputs_the_text_embeddings(
    arch, task, tiny_model, sentiment_csv, summary_csv
):
    data_file = summary_csv if task == "summarization" else sentiment_csv
    virtual, words = ptuning_and_words(arch, tiny_model, data_file, task)
    torch.testing.assert_close(virtual, words, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_text_initialised_ptuning_answers_as_text_initialised_prompt_tuning(
    arch, tiny_model, sentiment_csv
):
    # These tokenizers add no special tokens, so peft's prompt init reads the same ids.
    ptuning = Built(tiny_model(arch), sentiment_csv, "ptuning")
    prompt = Built(tiny_model(arch), sentiment_csv, "prompt")
    torch.testing.assert_close(
        ptuning.logits(ptuning.model), prompt.logits(prompt.model), rtol=1e-3, atol=1e-4
    )


def test_ptuning_random_init_is_peft_s_own(tiny_model, sentiment_csv):
    virtual, words = ptuning_and_words(
        "llama", tiny_model, sentiment_csv, "classification", prompt_init="random"
    )
    assert not torch.allclose(virtual, words, atol=1e-3)

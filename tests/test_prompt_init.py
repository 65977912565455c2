"""Prompt-style methods initialised from text start where the base model is: prefix
tuning reads its input exactly as the base model reads the init text followed by that
input, and P-tuning's encoder outputs the text's embeddings, as prompt tuning does."""

import pytest
import torch
from builds import Built

from peftlab.methods.prefix_init import init_tokens


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


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_virtual_tokens_see_the_same_positions_however_the_batch_is_padded(
    arch, method, tiny_model, sentiment_csv
):
    """peft numbers the left padding between its virtual tokens and the text; peftlab
    numbers each row's tokens after the virtual tokens, so a row scores and generates the
    same alone or beside a longer row, and an unpadded row exactly as peft's forward."""
    from peftlab.tasks.classification import next_token_logits
    from peftlab.tasks.text_formats import generate_tokens, pad

    built = Built(tiny_model(arch), sentiment_csv, method)
    model = built.model.eval()
    tok = built.tokenizer
    short = tok("a fine film")["input_ids"]
    long = tok("a long and winding film that goes on and on and on and on")["input_ids"]
    ids, mask = (
        pad([short, long], tok.pad_token_id, "left"),
        pad([[1] * len(short), [1] * len(long)], 0, "left"),
    )
    with torch.no_grad():
        batched = next_token_logits(model, ids, mask)[0]
        alone = next_token_logits(
            model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long)
        )[0]
        peft_alone = model(input_ids=torch.tensor([short])).logits[0, -1]
        together = generate_tokens(model, [short, long], tok.pad_token_id, True, max_new_tokens=5)
        by_itself = generate_tokens(model, [short], tok.pad_token_id, True, max_new_tokens=5)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone, peft_alone, rtol=1e-5, atol=1e-5)
    assert together[0] == by_itself[0]

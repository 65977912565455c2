"""Prefix tuning initialised from text: at step 0 the model reads its input exactly as
the base model reads the init text followed by that input."""

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

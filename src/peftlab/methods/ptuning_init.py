"""P-tuning that starts where the base model is.

peft's prompt encoder (an MLP, or an LSTM and an MLP, over a random embedding) starts
random, so its virtual tokens are vectors no real text produces and they move a
decoder's zero-shot answers from the first step (SmolLM2 on rotten_tomatoes: -1.0 point
under the base even after tuning the rate). Here the encoder's last linear layer is
solved, in closed form, so that at step 0 the encoder outputs the embeddings of real
text: the virtual tokens start exactly as prompt tuning's text init does, and the
encoder keeps its reparametrisation (every virtual token moves through shared weights)
for training.
"""

from __future__ import annotations

import torch

from peftlab.methods.prefix_init import init_tokens

# A ridge term small against the hidden features' scale: the solve stays exact to
# float32 rounding while a near-singular feature matrix cannot blow the weights up.
RIDGE = 1e-6


@torch.no_grad()
def init_ptuning_from_text(model, tokenizer, text: str) -> None:
    """Make a peft P-tuning model's prompt encoder output `text`'s token embeddings."""
    encoder = model.prompt_encoder[model.active_adapter]
    count = encoder.total_virtual_tokens
    ids = torch.tensor(init_tokens(tokenizer, text, count), device=encoder.embedding.weight.device)
    target = model.get_base_model().get_input_embeddings()(ids).float()
    last = encoder.mlp_head[-1]
    features = last_layer_inputs(encoder, last, count)
    weight, bias = ridge_solve(features, target)
    last.weight.copy_(weight.to(last.weight.dtype))
    last.bias.copy_(bias.to(last.bias.dtype))


def last_layer_inputs(encoder, last: torch.nn.Linear, count: int) -> torch.Tensor:
    """What the encoder's last linear layer sees for every virtual token (MLP or LSTM)."""
    seen = []
    hook = last.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    try:
        encoder(torch.arange(count, device=encoder.embedding.weight.device))
    finally:
        hook.remove()
    return seen[0].float()


def ridge_solve(features: torch.Tensor, target: torch.Tensor):
    """Weight and bias with features @ weight.T + bias == target.

    The dual (min-norm) form: fewer virtual tokens than hidden units, so the system is
    underdetermined and exact; with more tokens than units it is a least-squares fit."""
    design = torch.cat([features, torch.ones(len(features), 1, device=features.device)], 1)
    gram = design @ design.T
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), device=gram.device)
    solution = design.T @ torch.linalg.solve(gram, target)  # (hidden + 1, dim)
    return solution[:-1].T.contiguous(), solution[-1]

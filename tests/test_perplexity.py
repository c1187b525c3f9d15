import math

import torch

from lqsearch.eval import perplexity


def test_perplexity_is_exp_mean_nll(tiny_llama) -> None:
    windows = torch.randint(0, 128, (5, 16), generator=torch.Generator().manual_seed(3))
    result = perplexity(tiny_llama, windows, batch_size=2, progress=False)
    logits = tiny_llama(windows).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), windows[:, 1:].reshape(-1))
    assert math.isclose(result.perplexity, math.exp(nll.item()), rel_tol=1e-5)
    assert result.tokens == 80 and result.tokens_per_second > 0

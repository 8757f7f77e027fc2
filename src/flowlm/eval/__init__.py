"""Evaluation: generative perplexity under a judge LM, unigram entropy, diversity.

* :mod:`flowlm.eval.metrics`: pure functions on token ids (entropy, distinct-n, self-BLEU, the EOS rule,
  token-weighted Gen PPL aggregation into a :class:`GenPPLResult`).
* :mod:`flowlm.eval.judges`: :func:`load_judge` (``smollm2-offline``, a local Hugging Face folder, or a Hub
  name such as ``gpt2-large``) and :class:`CausalLMJudge`, which scores texts or generated id blocks.

Typical use::

    judge = load_judge("gpt2-large", device="cuda")        # the paper's judge (needs network once)
    result = judge.score_samples(sample_ids, tokenizer)    # EOS rule -> decode -> re-tokenize -> NLL
    entropy = mean_unigram_entropy(sample_ids)             # always report it beside Gen PPL
    print(result, entropy, result.definition)

Transformers is imported only when a judge is loaded.
"""

from flowlm.eval.judges import OFFLINE_JUDGE, CausalLMJudge, load_judge
from flowlm.eval.metrics import (
    GEN_PPL_AGGREGATION,
    GenPPLResult,
    decode_for_judge,
    distinct_n,
    gen_ppl_from_nll,
    mean_unigram_entropy,
    self_bleu,
    split_sample,
    strip_leading_bos,
    truncate_at_eos,
    unigram_entropy,
)

__all__ = [
    "GEN_PPL_AGGREGATION",
    "OFFLINE_JUDGE",
    "CausalLMJudge",
    "GenPPLResult",
    "decode_for_judge",
    "distinct_n",
    "gen_ppl_from_nll",
    "load_judge",
    "mean_unigram_entropy",
    "self_bleu",
    "split_sample",
    "strip_leading_bos",
    "truncate_at_eos",
    "unigram_entropy",
]

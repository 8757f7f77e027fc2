"""Evaluation: generative perplexity under a judge LM, unigram entropy, diversity.

* :mod:`flowlm.eval.metrics`: pure functions on token ids (entropy, distinct-n, self-BLEU, the EOS rule,
  token-weighted Gen PPL aggregation into a :class:`GenPPLResult`).
* :mod:`flowlm.eval.judges`: :func:`load_judge` (``smollm2-offline``, a local Hugging Face folder, or a Hub
  name such as ``gpt2-large``) and :class:`CausalLMJudge`, which scores texts or generated id blocks.
* :mod:`flowlm.eval.run`: the commands ``flowlm eval`` (:func:`evaluate`), ``flowlm score``
  (:func:`score_files`) and ``flowlm compare`` (:func:`compare_results`), sharded over
  ``torch.distributed`` ranks when a process group is initialized (:mod:`flowlm.eval.distributed`);
  :mod:`flowlm.eval.samples` (sample files), :mod:`flowlm.eval.report` (JSON / markdown) and
  :mod:`flowlm.eval.plots` (matplotlib, imported when a plot is drawn) serve them.

Typical use::

    judge = load_judge("gpt2-large", device="cuda")        # the paper's judge (needs network once)
    result = judge.score_samples(sample_ids, tokenizer)    # EOS rule -> decode -> re-tokenize -> NLL
    entropy = mean_unigram_entropy(sample_ids)             # always report it beside Gen PPL
    print(result, entropy, result.definition)

    results = evaluate(flowlm.load("runs/mine"), judge, [1, 2, 4], "eval/mine", num_samples=256)

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
from flowlm.eval.run import compare_results, evaluate, score_files

__all__ = [
    "GEN_PPL_AGGREGATION",
    "OFFLINE_JUDGE",
    "CausalLMJudge",
    "GenPPLResult",
    "compare_results",
    "decode_for_judge",
    "distinct_n",
    "evaluate",
    "gen_ppl_from_nll",
    "load_judge",
    "mean_unigram_entropy",
    "score_files",
    "self_bleu",
    "split_sample",
    "strip_leading_bos",
    "truncate_at_eos",
    "unigram_entropy",
]

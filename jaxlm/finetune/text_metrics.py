"""Scores of generated text against references, for generative fine-tuning.

Exact match and token-level F1 follow the SQuAD evaluation script's definitions (lower case,
punctuation and the articles a/an/the removed, whitespace collapsed; F1 over the bag of
remaining words); ROUGE-L is Google's ``rouge-score`` (F-measure of the longest common
subsequence), chrF and BLEU are ``sacrebleu``'s corpus scores (0-100, as it reports them).
"""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 of the normalised words (1 when both are empty)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every score of :data:`GENERATION_METRICS` over the pairs (means, corpus chrF/BLEU).

    The scorers are imported here, not with the module: ``rouge-score`` brings nltk, scipy and
    scikit-learn (about 100 MB of resident memory and 3 s of start-up) into every fine-tune,
    classification included, that imports this module for its SQuAD scores."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "f1": sum(token_f1(p, r) for p, r in pairs) / n,
        "rouge_l": sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / n,
        "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score),
        "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
    }

"""Image-blind baselines for ShapesVQA, from train-split frequencies only.

Never read off the evaluated questions: a baseline computed on the questions it scores is an
upper bound on what blind guessing can do, not a baseline.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict

from . import shapes


@functools.lru_cache(maxsize=4)
def train_answer_table(n: int = 20000) -> tuple[dict[str, str], dict[str, str]]:
    """(family → commonest answer, question → commonest answer) over n train questions."""
    by_family: dict[str, Counter] = defaultdict(Counter)
    by_question: dict[str, Counter] = defaultdict(Counter)
    for s in shapes.benchmark("train", n, seed=0):
        by_family[s.family][s.answer] += 1
        by_question[s.question][s.answer] += 1
    family = {f: c.most_common(1)[0][0] for f, c in by_family.items()}
    question = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
    return family, question


def blind_answers(samples, n_train: int = 20000) -> dict[str, list[str]]:
    """What each blind baseline answers to each sample: ``family_majority`` and ``question_only``
    (the commonest train answer to the same question text, else the family's)."""
    family, question = train_answer_table(n_train)
    return {
        "family_majority": [family[s.family] for s in samples],
        "question_only": [question.get(s.question, family[s.family]) for s in samples],
    }

"""The promotion policy: should the challenger replace the champion? (pure, no I/O)

:func:`decide` is the rule:

- no champion: promote when accuracy >= ``accuracy_floor`` (default 0.70);
- otherwise: promote when accuracy >= champion accuracy + ``min_delta`` (default 0.0, so a
  tie promotes the newer model, trained on more data) and no class's recall drops by more
  than ``max_class_recall_drop`` (default 0.05);
- with ``non_inferiority_margin`` > 0 the accuracy part is instead: promote when the lower
  bound of the 95 % interval of challenger-minus-champion accuracy on the same test images
  (:func:`weather_tasks.metrics.paired_difference_interval`) is above ``-margin`` *and* the
  challenger's accuracy is at least ``accuracy_floor`` (so repeated "no worse than" steps
  cannot creep below the floor); the recall check still applies. ``min_delta`` compares point
  estimates, which move by a few points between test sets of a few hundred images; the
  margin rule promotes only when the shared test images show, at 95 %, that the newer model
  is at most ``margin`` worse;
- a champion that cannot be evaluated is treated as absent (the floor still applies), so a
  broken registry entry cannot block a valid challenger forever.

Every accuracy in the reasons carries its 95 % interval when the metrics know their image
count, and the difference's interval is given whichever rule decides.

:func:`mcnemar_exact_p` tests the paired predictions of both models (reported for
information; the rule does not use it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from weather_tasks.config import PipelineConfig
from weather_tasks.metrics import Interval, Metrics

_EPS = 1e-9  # float slack in comparisons: a tie must count as a tie


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons)}


def decide(
    challenger: Metrics,
    champion: Metrics | None,
    cfg: PipelineConfig,
    *,
    champion_error: str | None = None,
    difference: Interval | None = None,
) -> Decision:
    """The promotion rule. ``champion_error``: why the champion could not be evaluated.
    ``difference``: challenger-minus-champion accuracy on the same images with its interval
    (:func:`weather_tasks.metrics.paired_difference_interval`); the margin rule needs it.
    """
    reasons: list[str] = []
    if champion_error:
        reasons.append(f"champion could not be evaluated ({champion_error}); treated as absent")
        champion = None
    floor_ok = challenger.accuracy >= cfg.accuracy_floor - _EPS
    floor_reason = (
        f"accuracy {_accuracy(challenger)} {'>=' if floor_ok else '<'} "
        f"floor {cfg.accuracy_floor:.4f}"
    )
    if champion is None:
        if not champion_error:
            reasons.append("no champion yet")
        reasons.append(floor_reason)
        return Decision(promote=floor_ok, reasons=reasons)

    margin = cfg.non_inferiority_margin
    if margin > 0:
        if difference is None:
            raise ValueError("non_inferiority_margin needs the paired difference interval")
        acc_ok = difference.low > -margin and floor_ok
        reasons.append(
            f"non-inferiority rule: accuracy difference {difference}, lower bound "
            f"{'>' if difference.low > -margin else '<='} -margin {-margin:.4f} "
            f"(champion {_accuracy(champion)})"
        )
        reasons.append(floor_reason)
    else:
        acc_ok = challenger.accuracy >= champion.accuracy + cfg.min_delta - _EPS
        reasons.append(
            f"min_delta rule: accuracy {_accuracy(challenger)} {'>=' if acc_ok else '<'} "
            f"champion {_accuracy(champion)} + min_delta {cfg.min_delta:.4f}"
        )
        if difference is not None:
            reasons.append(f"accuracy difference {difference} (for information)")
    recall_ok = True
    for cls, champ in champion.per_class.items():
        chal = challenger.per_class.get(cls)
        if chal is None:
            continue  # a class the challenger does not know cannot be compared
        drop = champ.recall - chal.recall
        if drop > cfg.max_class_recall_drop + _EPS:
            recall_ok = False
            reasons.append(
                f"recall of {cls!r} drops {drop:.4f} ({champ.recall:.4f} -> {chal.recall:.4f}) "
                f"> max_class_recall_drop {cfg.max_class_recall_drop:.4f}"
            )
    if recall_ok:
        reasons.append(
            f"no class recall drops more than {cfg.max_class_recall_drop:.4f}"
        )
    return Decision(promote=acc_ok and recall_ok, reasons=reasons)


def _accuracy(m: Metrics) -> str:
    ci = m.accuracy_ci
    return f"{m.accuracy:.4f}" + ("" if ci is None else f" (95% CI {ci.low:.4f}-{ci.high:.4f})")


def mcnemar_exact_p(challenger_correct: Sequence[bool], champion_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value on paired correctness (1.0 when they never disagree).

    The discordant pairs are Binomial(b + c, 1/2) under "equally good"; the distribution is
    symmetric, so the two-sided p is twice the smaller tail, at most 1 (exact integers).
    """
    b = sum(1 for a, c in zip(challenger_correct, champion_correct, strict=True) if a and not c)
    c = sum(1 for a, c in zip(challenger_correct, champion_correct, strict=True) if c and not a)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)

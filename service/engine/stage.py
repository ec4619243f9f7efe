"""One stage run on a batch: who answers at exit ``k``, who goes on, and deadline exits.

After stage ``k`` each image compares its own confidence with its own threshold (images with
different budgets share the batch), the confident ones leave with their answer, and the carried
state of the others is indexed down to a smaller batch for stage ``k + 1`` (MSDNet section 5,
dynamic evaluation; our contract in ``models/multi_exit.py``). Two variations keep answered
images in the batch: ``run_to_end`` (every image runs every stage; answers still leave early) and
the accuracy guard's shadows (a sampled fraction of early answers also runs to the final exit,
whose answer is compared with the early one, as Apparate does online).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models.exit_policy import confidences
from service.engine.backends import StageBackend
from service.engine.executor import ImageResult, RequestWork, StageBatch
from service.policy import leaving_now

Job = tuple[RequestWork, int]


@dataclass(frozen=True)
class StageRules:
    """How a stage run treats its batch beyond the exit rule itself.

    Attributes:
        run_to_end: every image runs every stage (answers still leave at their exit).
        shadow_fraction: probability that an early answer also runs on to the final exit.
        next_cost_s: estimated seconds of stage ``k + 1`` for the survivors; an image whose
            deadline falls before ``now + next_cost_s`` is answered now (a deadline exit).
    """

    run_to_end: bool = False
    shadow_fraction: float = 0.0
    next_cost_s: float | None = None


@dataclass
class StageOutcome:
    """What one stage run produced.

    Attributes:
        answered: ``(job, result)`` pairs answered at this exit (deadline exits included).
        survivors: the batch for stage ``k + 1`` (None when nobody goes on).
        agreements: ``(early exit, agrees)`` for each earlier answer that reached the final exit.
    """

    answered: list[tuple[Job, ImageResult]]
    survivors: StageBatch | None
    agreements: list[tuple[int, bool]] = field(default_factory=list)


def run_stage(
    backend: StageBackend,
    k: int,
    batch: StageBatch,
    compute_fractions: list[float],
    rules: StageRules | None = None,
) -> StageOutcome:
    """Run stage ``k`` on ``batch`` and split it at exit ``k``.

    Args:
        compute_fractions: ``[K]`` cumulative FLOPs of each exit over the full network's.
    """
    rules = rules or StageRules()
    num_exits, n = len(compute_fractions), len(batch)
    last = k == num_exits - 1
    next_state, logits = backend.run_stage(k, batch.state)
    logits = logits.cpu()
    conf, pred = confidences(logits)
    thresholds = batch.thresholds[:, k]
    fresh = batch.answered_exit < 0
    leave = leaving_now(conf, thresholds, batch.max_exit, k, num_exits) & fresh
    late = torch.zeros(n, dtype=torch.bool)
    if not last and rules.next_cost_s is not None:
        # Anytime answer: running stage k+1 would end past the deadline, so answer from exit k.
        cutoff = time.monotonic() + rules.next_cost_s
        late = torch.tensor([w.deadline < cutoff for w, _ in batch.jobs], dtype=torch.bool)
        late &= fresh & ~leave
    probs = torch.softmax(logits.float(), dim=-1).numpy()
    answered = [
        (batch.jobs[i], ImageResult(probs[i].copy(), k, compute_fractions[k], bool(late[i])))
        for i in (leave | late).nonzero().flatten().tolist()
    ]
    # Only answers a budget threshold decided are evidence about the thresholds (the guard's).
    audit = torch.where(fresh & leave, batch.audit & (conf >= thresholds), batch.audit & ~late)
    agreements = []
    if last:
        earlier = (~fresh & batch.audit).nonzero().flatten().tolist()
        agreements = [
            (int(batch.answered_exit[i]), int(batch.answered_class[i]) == int(pred[i])) for i in earlier
        ]
        return StageOutcome(answered, None, agreements)
    now_answered = leave | late
    if rules.run_to_end:
        go_on = torch.ones(n, dtype=torch.bool)
    else:
        go_on = ~fresh | ~now_answered
        if rules.shadow_fraction > 0:
            # Only threshold-decided early answers are audited (``audit``).
            sampled = [bool(audit[i]) and bool(leave[i]) and random.random() < rules.shadow_fraction
                       for i in range(n)]  # fmt: skip
            go_on |= torch.tensor(sampled, dtype=torch.bool)
    if not bool(go_on.any()):
        return StageOutcome(answered, None)
    answered_exit = torch.where(
        now_answered, torch.full_like(batch.answered_exit, k), batch.answered_exit
    )
    answered_class = torch.where(now_answered, pred.to(torch.int64), batch.answered_class)
    rest = StageBatch(
        batch.jobs,
        next_state,
        batch.thresholds,
        batch.max_exit,
        answered_exit,
        answered_class,
        probs,
        audit=audit,
    )
    return StageOutcome(answered, rest if bool(go_on.all()) else rest.select(go_on))


def deadline_answers(
    k: int, batch: StageBatch, cost_s: float, compute_fractions: list[float]
) -> tuple[list[tuple[Job, ImageResult]], StageBatch | None]:
    """Before stage ``k > 0`` runs: answer from exit ``k - 1`` the images it would make late.

    Returns:
        The deadline answers and the batch left to run (None when it is empty).
    """
    if batch.last_probs is None or k == 0:
        return [], batch
    cutoff = time.monotonic() + cost_s
    fresh = batch.answered_exit < 0
    late = torch.tensor([w.deadline < cutoff for w, _ in batch.jobs], dtype=torch.bool) & fresh
    if not bool(late.any()):
        return [], batch
    probs: np.ndarray = batch.last_probs
    answers = [
        (batch.jobs[i], ImageResult(probs[i].copy(), k - 1, compute_fractions[k - 1], True))
        for i in late.nonzero().flatten().tolist()
    ]
    keep: Tensor = ~late
    return answers, (batch.select(keep) if bool(keep.any()) else None)

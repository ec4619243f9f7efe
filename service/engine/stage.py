"""One stage run on a batch: who answers at exit ``k``, who goes on, and deadline exits.

After stage ``k`` each image compares its own confidence with its own threshold by the served
exit rule (``service.policy.leaving_now``; images with different budgets share the batch), the
confident ones leave with their answer, and the carried state of the others is gathered down
to a smaller batch for stage ``k + 1`` (MSDNet section 5, dynamic evaluation; our contract in
``models/multi_exit.py``). Two variations keep answered images in the batch: ``run_to_end``
(every image runs every stage; answers still leave early) and the accuracy guard's shadows (a
sampled fraction of early answers also runs to the final exit, whose answer is compared with
the early one, as Apparate does online).

Everything here is array operations over the batch; no Python loop visits an image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from service.engine.runner import StageRunner
from service.engine.work import RequestWork, StageBatch
from service.policy import leaving_now

_rng = np.random.default_rng()


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


@dataclass(frozen=True)
class Answers:
    """Images answered at one exit, as arrays over the answered images ``m``.

    Attributes:
        owner: ``[m]`` non-decreasing indices into ``owners``; ``row``: ``[m]`` within a request.
        probs: ``[m, C]`` the answers; ``late``: ``[m]`` deadline exits.
    """

    exit: int
    owners: list[RequestWork]
    owner: np.ndarray
    row: np.ndarray
    probs: np.ndarray
    late: np.ndarray

    def __len__(self) -> int:
        return len(self.owner)

    def runs(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each request's contiguous run of answers."""
        if len(self.owner) == 0:
            return []
        cuts = (np.flatnonzero(self.owner[1:] != self.owner[:-1]) + 1).tolist()
        return list(zip([0, *cuts], [*cuts, len(self.owner)], strict=True))


@dataclass
class StageOutcome:
    """What one stage run produced.

    Attributes:
        answered: the images answered at this exit (deadline exits included).
        survivors: the batch for stage ``k + 1`` (None when nobody goes on).
        agreements: ``(early exit, agrees)`` for each earlier answer that reached the final exit.
    """

    answered: Answers
    survivors: StageBatch | None
    agreements: list[tuple[int, bool]] = field(default_factory=list)


def still_wanted(batch: StageBatch, now: float) -> np.ndarray | None:
    """``[n]`` images someone still waits for at ``now``, or already answered (they run on
    regardless: ``run_to_end`` images and guard shadows); None when that is every image (the
    common case, decided with one scalar check per request and one reduction). A request settled
    because all its images were answered (``remaining == 0``) drops nothing: its images still
    here are answered ones."""
    owners_alive = all(
        w.cancel_reason is None and (not w.settled or w.remaining == 0) for w in batch.owners
    )
    if owners_alive and batch.deadline.min() >= now:
        return None
    gone = np.fromiter(
        (w.cancel_reason is not None or w.settled for w in batch.owners),
        dtype=np.bool_,
        count=len(batch.owners),
    )
    keep = ~gone[batch.owner] & (batch.deadline >= now)
    return keep | (batch.answered_exit >= 0)


def _answers(
    k: int, batch: StageBatch, mask: np.ndarray, probs: np.ndarray, late: np.ndarray
) -> Answers:
    idx = np.flatnonzero(mask)
    return Answers(k, batch.owners, batch.owner[idx], batch.row[idx], probs[idx], late[idx])


def run_stage(
    runner: StageRunner, k: int, batch: StageBatch, num_exits: int, rules: StageRules | None = None
) -> StageOutcome:
    """Run stage ``k`` on ``batch`` and split it at exit ``k``."""
    rules = rules or StageRules()
    n, last = len(batch), k == num_exits - 1
    next_state, probs = runner.step(k, batch.state)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    thresholds = batch.thresholds[:, k]
    fresh = batch.answered_exit < 0
    leave = fresh & leaving_now(conf, thresholds, batch.max_exit, k, num_exits)
    late = np.zeros(n, dtype=np.bool_)
    if not last and rules.next_cost_s is not None:
        # Anytime answer: running stage k+1 would end past the deadline, so answer from exit k.
        # (One reduction decides the common case: no deadline that close.)
        cutoff = time.monotonic() + rules.next_cost_s
        if batch.deadline.min() < cutoff:
            late = fresh & ~leave & (batch.deadline < cutoff)
    now_answered = leave | late
    answered = _answers(k, batch, now_answered, probs, late)
    # Only answers a budget threshold decided are evidence about the thresholds (the guard's).
    audit = np.where(leave, batch.audit & (conf >= thresholds), batch.audit & ~late)
    if last:
        earlier = np.flatnonzero(~fresh & batch.audit)
        agrees = batch.answered_class[earlier] == pred[earlier]
        pairs = list(zip(batch.answered_exit[earlier].tolist(), agrees.tolist(), strict=True))
        return StageOutcome(answered, None, pairs)
    if rules.run_to_end:
        go_on = np.ones(n, dtype=np.bool_)
    else:
        go_on = ~fresh | ~now_answered
        if rules.shadow_fraction > 0:
            # Only threshold-decided early answers are audited (``audit``).
            go_on |= audit & leave & (_rng.random(n) < rules.shadow_fraction)
    if not go_on.any():
        return StageOutcome(answered, None)
    rest = StageBatch(
        batch.owners,
        batch.owner,
        batch.row,
        next_state,
        batch.thresholds,
        batch.max_exit,
        batch.deadline,
        np.where(now_answered, k, batch.answered_exit),
        np.where(now_answered, pred, batch.answered_class),
        audit,
        probs,
    )
    if go_on.all():
        return StageOutcome(answered, rest)
    idx = np.flatnonzero(go_on)
    return StageOutcome(answered, rest.take(idx, runner.gather(next_state, idx)))


def deadline_answers(
    k: int, batch: StageBatch, cost_s: float, runner: StageRunner
) -> tuple[Answers | None, StageBatch | None]:
    """Before stage ``k > 0`` runs: answer from exit ``k - 1`` the images it would make late.

    Returns:
        The deadline answers (None: none) and the batch left to run (None when it is empty).
    """
    if batch.last_probs is None or k == 0:
        return None, batch
    cutoff = time.monotonic() + cost_s
    if batch.deadline.min() >= cutoff:  # the common case, in one reduction
        return None, batch
    late = (batch.answered_exit < 0) & (batch.deadline < cutoff)
    if not late.any():
        return None, batch
    answers = _answers(k - 1, batch, late, batch.last_probs, late)
    keep = np.flatnonzero(~late)
    if len(keep) == 0:
        return answers, None
    return answers, batch.take(keep, runner.gather(batch.state, keep))

"""Round robin over many queues: the next few of them at each call, in turn.

A worker may serve 1,000 queues. Its sweeps (the janitor's, the reaper's safety net,
the flow pump's outboxes, the forwarder's queues with no due time known, the
dispatcher's dry queues) look at a bounded slice of them per pass rather than at all:
an idle worker's cost then does not grow with its queues, and each queue still comes
up every ``ceil(queues / n)`` passes.
"""

from __future__ import annotations

from collections.abc import Sequence


class Turns:
    """A cursor over a sequence of names: ``take(names, n)`` gives the next ``n`` in
    turn, wrapping around.

    The names are passed at each call, so they may change between calls. The turn is
    kept as the name due next, not only its position: names that come or go elsewhere
    do not shift it; if that name is gone, the turn goes on from its position.
    """

    def __init__(self) -> None:
        self._at = 0  # position of the name due next
        self._next: str | None = None  # that name, to find it again when names change

    def take(self, names: Sequence[str], n: int) -> list[str]:
        """The next ``n`` names in turn; all of them, in their order and without moving
        the turn, when there are no more than ``n`` (an empty list for none)."""
        count = len(names)
        if count <= n:
            return list(names)
        at = self._at % count
        due = self._next
        if due is not None and names[at] != due and due in names:
            at = names.index(due)
        taken = [names[(at + i) % count] for i in range(n)]
        self._at = (at + n) % count
        self._next = names[self._at]
        return taken

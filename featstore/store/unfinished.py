"""What ``featstore check`` says of a split an extract is writing now: a note for later, not a problem (attack 68 #5).

The writer is the process holding the store's writer lock (its pid as ``info`` shows it, :func:`locking.lock_holder`);
a split of the store that is not complete, or has rows past its commit, is then its work in progress, or one it may
resume: ``check`` is to be run again once it has ended, when a split still unfinished is a killed extract's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Writing:
    """The featstore process holding the store's writer lock now (``pid``; None: none), and the notes said of it."""

    pid: int | None
    notes: list[str]

    def says(self, where: str, split: str, done: int, total) -> bool:
        """Whether the unfinished ``split`` is a live writer's (a note then, not a problem: attack 68 #5)."""
        if self.pid is None:
            return False
        of = f" of {total} images" if total is not None else " rows"
        self.notes.append(
            f"{where}: split {split} is not complete ({done}{of} so far) while featstore process {self.pid} writes to "
            f"this store; run `featstore check` again when that process has ended"
        )
        return True

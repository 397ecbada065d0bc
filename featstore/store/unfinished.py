"""What ``featstore check`` says of a split an extract is writing now: a note for later, not a problem (attack 68 #5).

The writer is the process that holds the store's writer lock now, tried as the writer takes it (never a pid alone: a
killed extract's pid file names any process its pid was given to next, attack 70 #2), and the split it is writing is
the one it records beside the lock (:mod:`featstore.store.lockholder`). That split, not complete or with rows past its
commit, is then its work in progress: ``check`` is to be run again once it has ended. Any other unfinished split is a
problem, also while a writer holds the store: a killed extract's.
"""

from __future__ import annotations

from dataclasses import dataclass

from featstore.store.lockholder import Holder, holder


@dataclass(frozen=True)
class Writing:
    """The featstore process holding the store's writer lock now (``holder``; None: none), and the notes said of it."""

    holder: Holder | None
    notes: list[str]

    @classmethod
    def of(cls, path, notes: list[str] | None = None) -> Writing:
        """The store ``path``'s writer now (its notes into ``notes``, when given)."""
        return cls(holder(path), [] if notes is None else notes)

    @property
    def pid(self) -> int | None:
        """The writer's pid (None: no writer, or none recorded)."""
        return None if self.holder is None else self.holder.pid

    def says(self, where: str, name: str, split: str, done: int, total) -> bool:
        """Whether the unfinished ``split`` of extractor group ``name`` (``<split>/augmented (augmented copies)`` for
        its copies) is what the live writer records writing: that split, in that group (a note then, not a problem:
        attack 68 #5; a live extract of another model's split of that name hid a killed one, 71 #2)."""
        h = self.holder
        if h is None:
            return False
        who = f"featstore process {h.pid}" if h.pid is not None else "a featstore process"
        if h.stranger is not None or h.split is None:  # every unfinished split stays a problem, said once
            note = (
                f"this store's writer lock is held, with a lock record of {h.stranger}'s that no writer of this store "
                f"made (or {h.stranger} may not write the store): unfinished splits are listed as problems"
                if h.stranger is not None  # a record this store's writers did not make (attack 73 #4)
                else f"{who} holds this store's writer lock without recording which split it writes; a split it "
                f"writes is listed as a problem until it ends: run `featstore check` again when that process has ended"
            )
            if note not in self.notes:
                self.notes.append(note)
            return False
        if not h.writes(name, split.split("/", 1)[0].split(" ", 1)[0], copies=" (augmented copies)" in split):
            return False
        of = f" of {total} images" if total is not None else " rows"
        self.notes.append(
            f"{where}: split {split} is not complete ({done}{of} so far) while {who} writes to "
            f"this store; run `featstore check` again when that process has ended"
        )
        return True

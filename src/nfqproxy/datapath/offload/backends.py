"""Backend ids for the offload path: each (service port, backend) the tables hold gets a
number, which the verdict's mark carries and the kernel's DNAT map turns into the backend's
address. The connection's mark keeps it, so that the flows of one backend of one service
port can be found and deleted in conntrack, and a restart can adopt them. Addresses are
packed bytes of either family (4 or 16): the ids are one space over both, so that a mark
names one backend whichever family's map holds it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from nfqproxy.datapath.frontends import PROTOCOL_MASK, Frontend, TableKey
from nfqproxy.datapath.marks import MarkLayout

Backend = tuple[bytes, int]
Assignment = tuple[TableKey, Backend]
UDP = 17
# How many released ids one plan may take before it takes never-used ones: copying the
# whole free list at every sync would cost what the node holds, not what changed.
FREE_LOOKAHEAD = 4096


def present(frontend: Frontend | None) -> tuple[Backend, ...]:
    """The backends that keep their flows: chosen, then draining (the tables' order)."""
    return (*frontend.backends, *frontend.draining) if frontend else ()


@dataclass
class IdPlan:
    """What one change does to the ids: new ones, those leaving, UDP ones to move now."""

    added: dict[Assignment, int] = field(default_factory=dict)
    leaving: dict[Assignment, int] = field(default_factory=dict)  # no longer present
    unchosen_udp: dict[Assignment, int] = field(default_factory=dict)  # draining UDP


class BackendIds:
    """Which id each (service port, backend) has, both ways. Every method costs what the
    change touches, not what the node holds: at 10k services a sync that rebuilt a set of
    all 60k ids took milliseconds, and one change must reach traffic in a few."""

    def __init__(self, marks: MarkLayout) -> None:
        self.marks = marks
        self.ids: dict[Assignment, int] = {}
        self.owners: dict[int, Assignment] = {}  # self.ids inverted
        self.adopted: dict[Assignment, int] = {}  # from a previous process, until placed
        self._adopted_ids: set[int] = set()
        # Released ids, reused oldest first (a dict keeps insertion order, and finds and
        # removes one in O(1), as a deque would not).
        self._free: dict[int, None] = {}
        self._free_lock = threading.Lock()  # release() comes from the settling thread
        self._next = 1

    def adopt(self, assignments: dict[Assignment, int]) -> None:
        """Ids a previous process gave (read back from the map): kept if still wanted."""
        self.adopted = dict(assignments)
        self._adopted_ids = set(assignments.values())
        self._next = max([self._next, *(i + 1 for i in assignments.values())])

    def in_use(self, backend_id: int) -> bool:
        return backend_id in self.owners or backend_id in self._adopted_ids

    def mark(self, assignment: Assignment) -> int:
        return self.marks.backend_mark(self.ids[assignment])

    def plan(
        self, old: dict[TableKey, Frontend | None], new: dict[TableKey, Frontend | None]
    ) -> IdPlan:
        """Ids for the backends of the new frontends (nothing is committed yet)."""
        result = IdPlan()
        fresh = iter(self._fresh_ids())
        for key, frontend in new.items():
            for backend in present(frontend):
                assignment = (key, backend)
                if assignment in self.ids:
                    continue
                if assignment in self.adopted:
                    result.added[assignment] = self.adopted[assignment]
                else:
                    result.added[assignment] = next(fresh)
        for key, frontend in old.items():
            replacement = new.get(key)
            kept = set(present(replacement))
            chosen = set(replacement.backends) if replacement else set()
            for backend in present(frontend):
                assignment = (key, backend)
                if assignment not in self.ids or frontend is None:
                    continue
                if backend not in kept:
                    result.leaving[assignment] = self.ids[assignment]
                elif (
                    # The protocol without the cluster variant's bit: a variant table's
                    # UDP flows move as its frontend's do.
                    key[1] & PROTOCOL_MASK == UDP
                    and backend not in chosen
                    and frontend
                    and backend in frontend.backends
                ):
                    result.unchosen_udp[assignment] = self.ids[assignment]
        return result

    def _fresh_ids(self) -> Iterator[int]:
        """Unused ids, released ones first. Taken lazily: a change takes a few."""
        with self._free_lock:
            free = list(itertools.islice(self._free, FREE_LOOKAHEAD))
        for backend_id in free:
            if not self.in_use(backend_id):
                yield backend_id
        while True:
            if self._next > self.marks.max_backend_id:
                raise ValueError(
                    f"more than {self.marks.max_backend_id} backends: the mark mask "
                    f"{self.marks.mask:#010x} has no room for more ids (--mark-mask)"
                )
            self._next += 1
            if not self.in_use(self._next - 1):
                yield self._next - 1

    def commit(self, plan: IdPlan) -> None:
        """Takes the plan's ids. Those leaving are not free yet: release() frees them once
        their connections and map elements are gone, so that no new backend inherits a
        connection of an old one."""
        for assignment in plan.leaving:
            del self.owners[self.ids.pop(assignment)]
        for assignment, backend_id in plan.added.items():
            self.ids[assignment] = backend_id
            self.owners[backend_id] = assignment
            if self.adopted.pop(assignment, None) is not None:
                self._adopted_ids.discard(backend_id)
            with self._free_lock:
                self._free.pop(backend_id, None)

    def release(self, backend_ids: list[int]) -> None:
        with self._free_lock:
            self._free.update(dict.fromkeys(backend_ids))

    def release_unplaced(self) -> dict[Assignment, int]:
        """After the first sync: adopted ids no sync placed belong to backends removed
        while no process ran. Returned and forgotten, so that their flows are deleted and
        the ids released like those of any backend that leaves."""
        unplaced, self.adopted, self._adopted_ids = self.adopted, {}, set()
        return unplaced

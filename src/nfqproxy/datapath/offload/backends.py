"""Backend ids for the offload path: each (service port, backend) the tables hold gets a
number, which the verdict's mark carries and the kernel's DNAT map turns into the backend's
address. The connection's mark keeps it, so that the flows of one backend of one service
port can be found and deleted in conntrack, and a restart can adopt them."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from nfqproxy.datapath.frontends import Frontend, TableKey
from nfqproxy.datapath.marks import MarkLayout

Backend = tuple[bytes, int]
Assignment = tuple[TableKey, Backend]
UDP = 17


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
    def __init__(self, marks: MarkLayout) -> None:
        self.marks = marks
        self.ids: dict[Assignment, int] = {}
        self.adopted: dict[Assignment, int] = {}  # from a previous process, until placed
        self._free: deque[int] = deque()  # released ids, reused oldest first
        self._free_lock = threading.Lock()  # release() comes from the settling thread
        self._next = 1

    def adopt(self, assignments: dict[Assignment, int]) -> None:
        """Ids a previous process gave (read back from conntrack): kept if still wanted."""
        self.adopted = dict(assignments)
        self._next = max([self._next, *(i + 1 for i in assignments.values())])

    def mark(self, assignment: Assignment) -> int:
        return self.marks.backend_mark(self.ids[assignment])

    def plan(
        self, old: dict[TableKey, Frontend | None], new: dict[TableKey, Frontend | None]
    ) -> IdPlan:
        """Ids for the backends of the new frontends (nothing is committed yet)."""
        result = IdPlan()
        taken = set(self.ids.values()) | set(self.adopted.values())
        fresh = iter(self._fresh_ids(taken))
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
                    key[1] == 17
                    and backend not in chosen
                    and frontend
                    and backend in frontend.backends
                ):
                    result.unchosen_udp[assignment] = self.ids[assignment]
        return result

    def _fresh_ids(self, taken: set[int]):  # type: ignore[no-untyped-def]
        with self._free_lock:
            free = list(self._free)
        for backend_id in free:
            if backend_id not in taken:
                yield backend_id
        while True:
            if self._next > self.marks.max_backend_id:
                raise ValueError(
                    f"more than {self.marks.max_backend_id} backends: the mark mask "
                    f"{self.marks.mask:#010x} has no room for more ids (--mark-mask)"
                )
            self._next += 1
            if self._next - 1 not in taken:
                yield self._next - 1

    def commit(self, plan: IdPlan) -> None:
        """Takes the plan's ids. Those leaving are not free yet: release() frees them once
        their connections and map elements are gone, so that no new backend inherits a
        connection of an old one."""
        for assignment, backend_id in plan.added.items():
            self.ids[assignment] = backend_id
            self.adopted.pop(assignment, None)
            with self._free_lock:
                if backend_id in self._free:
                    self._free.remove(backend_id)
        for assignment in plan.leaving:
            del self.ids[assignment]

    def release(self, backend_ids: list[int]) -> None:
        with self._free_lock:
            self._free.extend(backend_ids)

    def release_unplaced(self) -> dict[Assignment, int]:
        """After the first sync: adopted ids no sync placed belong to backends removed
        while no process ran. Returned and forgotten, so that their flows are deleted and
        the ids released like those of any backend that leaves."""
        unplaced, self.adopted = self.adopted, {}
        return unplaced

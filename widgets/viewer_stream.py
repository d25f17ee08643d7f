"""What the browser holds of a streamed volume: the slab plan of :class:`~medlab.widgets.viewer.Viewer`.

The viewer streams a volume too large to send at once in slabs of whole axial slices (see
"How voxels travel" in :mod:`medlab.widgets.viewer`, which also holds the sizes: ``SLAB_BYTES``,
``BROWSER_CACHE_BYTES``, ``STREAM_WINDOW``); :class:`SlabPlan` decides which slab goes into
which browser slot, so Python knows what the browser holds without asking.
"""

from __future__ import annotations

from medlab.errors import ParameterError

__all__ = ["SlabPlan"]


class SlabPlan:
    """What the browser holds of a streamed volume, and which slab to send next.

    The display volume ``[k, j, i]`` is cut into slabs of ``per_slab`` whole axial slices; the
    browser keeps at most ``capacity`` of them, each in a numbered slot. Python decides every
    move (which slab, which slot), so both sides agree on what is held without asking: messages
    on one widget channel arrive in order, so a slab sent before a slice update is in the
    browser when that update is handled.

    Parameters
    ----------
    n_slices : int
        Axial slices of the display volume.
    per_slab : int
        Slices per slab.
    capacity : int
        Slabs the browser may hold (the whole volume when ``capacity`` covers it).

    Examples
    --------
    >>> plan = SlabPlan(n_slices=10, per_slab=2, capacity=3)
    >>> plan.count, plan.capacity
    (5, 3)
    >>> [plan.next(cursor=5) for _ in range(4)]    # nearest the cursor's slab (2) first
    [(2, 0), (1, 1), (3, 2), None]
    >>> plan.holds(4), plan.holds(9), plan.complete
    (True, False, False)
    >>> plan.next(cursor=9)                        # the cursor moved: the farthest slab makes room
    (4, 1)
    """

    def __init__(self, n_slices: int, per_slab: int, capacity: int):
        if per_slab < 1 or capacity < 1:
            raise ParameterError(f"a slab plan needs per_slab >= 1 and capacity >= 1; got {per_slab}, {capacity}")
        self.n_slices, self.per_slab = int(n_slices), int(per_slab)
        self.count = -(-self.n_slices // self.per_slab)
        self.capacity = min(int(capacity), self.count)
        self.reset()

    def reset(self) -> None:
        """Forget everything sent: the browser holds nothing."""
        self.slot_of: dict[int, int] = {}
        self.in_flight: set[int] = set()

    def slab_of(self, k: int) -> int:
        return int(k) // self.per_slab

    def slices(self, slab: int) -> tuple[int, int]:
        """First and one-past-last axial slice of ``slab``."""
        return slab * self.per_slab, min(self.n_slices, (slab + 1) * self.per_slab)

    def holds(self, k: int) -> bool:
        """Whether the browser has (or is about to receive) axial slice ``k``."""
        return self.slab_of(k) in self.slot_of

    @property
    def complete(self) -> bool:
        """The browser has the whole volume (every plane can be cut there)."""
        return len(self.slot_of) == self.count

    def next(self, cursor: int) -> tuple[int, int] | None:
        """The slab to send next for axial slice ``cursor`` and its slot, recorded as sent;
        ``None`` when the browser already holds the ``capacity`` slabs nearest the cursor."""
        centre = self.slab_of(cursor)
        wanted = sorted(range(self.count), key=lambda s: (abs(s - centre), s))[: self.capacity]
        missing = [s for s in wanted if s not in self.slot_of]
        if not missing:
            return None
        slab = missing[0]
        used = set(self.slot_of.values())
        free = [n for n in range(self.capacity) if n not in used]
        if free:
            slot = free[0]
        else:  # evict the held slab farthest from the cursor (it is not wanted)
            far = max(self.slot_of, key=lambda s: (abs(s - centre), s))
            slot = self.slot_of.pop(far)
        self.slot_of[slab] = slot
        self.in_flight.add(slab)
        return slab, slot

    def acknowledged(self, slab: int) -> None:
        self.in_flight.discard(int(slab))

"""Incremental bin packers: the engines behind plan_packs, plan_packs_fill and StreamPacker.

Each engine holds a bounded set of open bins (rows being filled) and places one
sample at a time with `add(item, n)`; bins it closes are appended to `.closed`, in
closing order, for the caller to drain. `flush()` closes the rest. Rooms and lengths
are ints <= max_len, which buys structures that never scan the open bins:

  * BestFit: open bins bucketed by remaining room, plus a sorted list of the rooms in
    use; the tightest bin with room >= n is one bisect away, O(log L).
  * FirstFit: a max segment tree over bins in opening order; the oldest bin with
    room >= n is one root-to-leaf walk, O(log bins). Positions are compacted when
    the tree fills, so an endless stream uses O(open bins) memory.
  * NextFit: one open bin (NaViT / lucidrains vit-pytorch `group_images_by_max_seq_len`).

Bounded (online) mode, open_bins=k: when placing a sample leaves k+1 bins open, one
is closed: the fullest for best fit (least likely to be topped up), the oldest for
first fit. A bin whose room reaches 0 closes at once.

Fill-to-exact (max_shrink > 0, see fill.py): a sample that fits no open bin exactly, but
fits the roomiest bin that is too small for it after losing <= max_shrink of its tokens
(never below min_tokens), is given exactly that room; `shrunk[item]` records the new
count and the bin closes full. Best fit prefers this shrink to a roomier bin that would
take the sample whole (closing a row now beats leaving a residue that rarely fills:
+0.6 to +1 point of fill online at L=4096, see fill.py); first/next fit shrink only
when nothing fits.

Sized items (BestFit.add_range, behind plan_sized): an item that may take any size in
[lo, hi] and prefers `pref` closes an open row whose room lies in [lo, hi] exactly, the
room nearest `pref` first; otherwise it goes whole, at `pref`, into the tightest row with
room, or opens a row. `shrunk[item]` then records every size that differs from the item's
own (smaller or, when hi > pref, larger). With lo = pref = hi this is plain best fit, and
with lo = min_target(n) and pref = hi = n it is fill-to-exact.

Bin packing background: Johnson, "Near-optimal bin packing algorithms" (1973).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort

__all__ = ["BestFit", "FirstFit", "NextFit", "make_engine", "min_target"]


def min_target(n: int, max_shrink: float, min_tokens: int) -> int:
    """Fewest tokens fill-to-exact may leave a sample of n tokens: ceil((1-max_shrink)*n), >= min_tokens."""
    return max(min_tokens, n - math.floor(max_shrink * n))


class _Engine:
    def __init__(self, max_len: int, *, open_bins: int | None = None, max_shrink: float = 0.0, min_tokens: int = 1) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if open_bins is not None and open_bins < 1:
            raise ValueError(f"open_bins (buffer) must be None or >= 1, got {open_bins}")
        self.max_len = max_len
        self.open_bins = open_bins
        self.max_shrink = max_shrink
        self.min_tokens = min_tokens
        self.closed: list[list[int]] = []
        self.shrunk: dict[int, int] = {}
        self.num_open = 0

    def _oversize(self, item: int, n: int) -> ValueError:
        return ValueError(f"sample {item} has {n} tokens > max_len={self.max_len}" if n > 0 else f"sample {item} has {n} tokens (need >= 1)")

    def _shrink_to(self, item: int, n: int, room: int) -> bool:
        if self.max_shrink > 0 and room >= min_target(n, self.max_shrink, self.min_tokens):
            self.shrunk[item] = room
            return True
        return False

    def _common_state(self) -> dict:
        return {"shrunk": dict(self.shrunk), "closed": [list(b) for b in self.closed], "num_open": self.num_open}

    def _load_common(self, sd: dict) -> None:
        self.shrunk = {int(k): int(v) for k, v in sd["shrunk"].items()}
        self.closed = [list(b) for b in sd["closed"]]
        self.num_open = int(sd["num_open"])


class BestFit(_Engine):
    def __init__(self, max_len: int, **kw) -> None:
        super().__init__(max_len, **kw)
        self._rooms: list[int] = []  # sorted distinct rooms of open bins
        self._by_room: dict[int, list[list[int]]] = {}  # room -> open bins (item lists), LIFO

    def _take(self, i: int) -> tuple[list[int], int]:
        room = self._rooms[i]
        bucket = self._by_room[room]
        bin_ = bucket.pop()
        if not bucket:
            del self._rooms[i], self._by_room[room]
        return bin_, room

    def _put(self, bin_: list[int], room: int) -> None:
        bucket = self._by_room.get(room)
        if bucket is None:
            self._by_room[room] = [bin_]
            insort(self._rooms, room)
        else:
            bucket.append(bin_)

    def add(self, item: int, n: int) -> None:
        if not 0 < n <= self.max_len:
            raise self._oversize(item, n)
        rooms = self._rooms
        i = bisect_left(rooms, n)
        if i < len(rooms) and rooms[i] == n:
            bin_, room = self._take(i)  # exact fit
        elif i and self._shrink_to(item, n, rooms[i - 1]):
            bin_, room = self._take(i - 1)  # the roomiest row too small for n: closes full
            n = room
        elif i < len(rooms):
            bin_, room = self._take(i)  # best fit
        else:
            bin_, room = [], self.max_len
            self.num_open += 1
        bin_.append(item)
        room -= n
        if room == 0:
            self.closed.append(bin_)
            self.num_open -= 1
        else:
            self._put(bin_, room)
        if self.open_bins is not None and self.num_open > self.open_bins:
            self.closed.append(self._take(0)[0])  # the fullest open bin
            self.num_open -= 1

    def add_range(self, item: int, lo: int, pref: int, hi: int) -> None:
        """Place an item that takes any size in [lo, hi] (1 <= lo <= pref <= hi <= max_len).

        Inlined (no _take/_put calls): plan_sized runs it once per sample.
        """
        rooms, by_room = self._rooms, self._by_room
        i = bisect_left(rooms, pref)
        if i < len(rooms) and rooms[i] <= hi:
            if i and rooms[i - 1] >= lo and pref - rooms[i - 1] < rooms[i] - pref:
                i -= 1
        elif not (i and rooms[i - 1] >= lo):
            if i < len(rooms):  # best fit: the tightest room > hi takes the item whole
                room = rooms[i]
                bucket = by_room[room]
                bin_ = bucket.pop()
                if not bucket:
                    del rooms[i], by_room[room]
            elif hi >= self.max_len:  # a new row the item fills alone
                if pref != self.max_len:
                    self.shrunk[item] = self.max_len
                self.closed.append([item])
                return
            else:
                bin_, room = [], self.max_len
                self.num_open += 1
            bin_.append(item)
            room -= pref
            bucket = by_room.get(room)
            if bucket is None:
                by_room[room] = [bin_]
                insort(rooms, room)
            else:
                bucket.append(bin_)
            if self.open_bins is not None and self.num_open > self.open_bins:
                self.closed.append(self._take(0)[0])  # the fullest open bin
                self.num_open -= 1
            return
        else:
            i -= 1
        room = rooms[i]  # closes exactly at this room: pref, shrunk or grown
        bucket = by_room[room]
        bin_ = bucket.pop()
        if not bucket:
            del rooms[i], by_room[room]
        bin_.append(item)
        self.closed.append(bin_)
        self.num_open -= 1
        if room != pref:
            self.shrunk[item] = room

    def flush(self) -> list[list[int]]:
        """Close every open bin (fullest first) and return all closed bins not yet drained."""
        for room in self._rooms:
            self.closed.extend(self._by_room[room])
        self._rooms, self._by_room, self.num_open = [], {}, 0
        out, self.closed = self.closed, []
        return out

    def state_dict(self) -> dict:
        sd = self._common_state()
        sd["open"] = [[room, [list(b) for b in self._by_room[room]]] for room in self._rooms]
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self._load_common(sd)
        self._rooms = [int(room) for room, _ in sd["open"]]
        self._by_room = {int(room): [list(b) for b in bins] for room, bins in sd["open"]}


class FirstFit(_Engine):
    def __init__(self, max_len: int, **kw) -> None:
        super().__init__(max_len, **kw)
        self._rebuild([])

    def _rebuild(self, open_bins: list[tuple[list[int], int]]) -> None:
        cap = 16
        while cap < 2 * (len(open_bins) + 1):
            cap *= 2
        self._cap = cap
        self._tree = [0] * (2 * cap)  # max room per subtree; 0 = empty or closed slot
        self._bins: list[list[int] | None] = [None] * cap
        self._next = len(open_bins)
        for pos, (bin_, room) in enumerate(open_bins):
            self._bins[pos] = bin_
            self._tree[cap + pos] = room
        for i in range(cap - 1, 0, -1):
            self._tree[i] = max(self._tree[2 * i], self._tree[2 * i + 1])

    def _open_list(self) -> list[tuple[list[int], int]]:
        return [(b, self._tree[self._cap + p]) for p, b in enumerate(self._bins) if b is not None]

    def _first(self, n: int) -> int:
        tree, i = self._tree, 1
        if tree[1] < n:
            return -1
        while i < self._cap:
            i <<= 1
            if tree[i] < n:
                i += 1
        return i - self._cap

    def _set(self, pos: int, room: int) -> None:
        tree = self._tree
        i = pos + self._cap
        tree[i] = room
        i >>= 1
        while i:
            a, b = tree[2 * i], tree[2 * i + 1]
            m = a if a > b else b
            if tree[i] == m:
                break
            tree[i] = m
            i >>= 1

    def _close(self, pos: int) -> None:
        self.closed.append(self._bins[pos])
        self._bins[pos] = None
        self._set(pos, 0)
        self.num_open -= 1

    def add(self, item: int, n: int) -> None:
        if not 0 < n <= self.max_len:
            raise self._oversize(item, n)
        pos = self._first(n)
        if pos < 0 and self._tree[1] and self._shrink_to(item, n, self._tree[1]):
            n = self._tree[1]
            pos = self._first(n)
        if pos < 0:
            if self._next == self._cap:
                self._rebuild(self._open_list())  # compact; amortised O(1) per bin
            pos = self._next
            self._next += 1
            self._bins[pos] = []
            room = self.max_len
            self.num_open += 1
        else:
            room = self._tree[self._cap + pos]
        self._bins[pos].append(item)
        self._set(pos, room - n)
        if room == n:
            self._close(pos)
        if self.open_bins is not None and self.num_open > self.open_bins:
            self._close(self._first(1))  # the oldest open bin

    def flush(self) -> list[list[int]]:
        """Close every open bin (oldest first) and return all closed bins not yet drained."""
        self.closed.extend(b for b, _ in self._open_list())
        self._rebuild([])
        self.num_open = 0
        out, self.closed = self.closed, []
        return out

    def state_dict(self) -> dict:
        sd = self._common_state()
        sd["open"] = [[room, list(b)] for b, room in self._open_list()]
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self._load_common(sd)
        self._rebuild([(list(b), int(room)) for room, b in sd["open"]])


class NextFit(_Engine):
    def __init__(self, max_len: int, **kw) -> None:
        super().__init__(max_len, **kw)
        self._bin: list[int] = []
        self._room = max_len

    def add(self, item: int, n: int) -> None:
        if not 0 < n <= self.max_len:
            raise self._oversize(item, n)
        if n > self._room and not (self._bin and self._shrink_to(item, n, self._room)):
            if self._bin:
                self.closed.append(self._bin)
            self._bin, self._room = [], self.max_len
        n = min(n, self._room)
        self._bin.append(item)
        self._room -= n
        if self._room == 0:
            self.closed.append(self._bin)
            self._bin, self._room = [], self.max_len
        self.num_open = 1 if self._bin else 0

    def flush(self) -> list[list[int]]:
        if self._bin:
            self.closed.append(self._bin)
        self._bin, self._room, self.num_open = [], self.max_len, 0
        out, self.closed = self.closed, []
        return out

    def state_dict(self) -> dict:
        sd = self._common_state()
        sd["open"] = [[self._room, list(self._bin)]] if self._bin else []
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self._load_common(sd)
        self._room, self._bin = (int(sd["open"][0][0]), list(sd["open"][0][1])) if sd["open"] else (self.max_len, [])


def make_engine(policy: str, max_len: int, *, open_bins: int | None = None, max_shrink: float = 0.0, min_tokens: int = 1) -> _Engine:
    """The incremental engine of a policy: "bfd" -> BestFit, "ffd" -> FirstFit, "next_fit" -> NextFit."""
    engines = {"bfd": BestFit, "ffd": FirstFit, "next_fit": NextFit}
    if policy not in engines:
        raise ValueError(f"policy must be one of {tuple(engines)}, got {policy!r}")
    return engines[policy](max_len, open_bins=open_bins, max_shrink=max_shrink, min_tokens=min_tokens)

"""Decoding orders over a 2D token grid, shared by the any-order paradigms (RandAR, LPD; MaskGIT's
Halton order): the order is a (B, N) tensor whose row lists, per sample, the raster index decoded at
each decode position; a step schedule (tokens per step) cuts it into steps.

One vocabulary, ``ORDERS`` (``model.options.order`` of randar and lpd), each order defined once here:

- ``raster``: row by row (``raster_order``).
- ``diagonal``: NAR's order, by Manhattan distance i + j from the top-left corner, raster within a
  diagonal (``diagonal_order``).
- ``halton``: the cells in the order a 2D Halton sequence (bases 2 and 3) first visits them, a
  deterministic low-discrepancy order (``halton_order``; MaskGIT's Halton order too).
- ``random``: independent uniform permutations per sample (``random_orders``: RandAR's and LPD's
  training and sampling).
- ``locality``: LPD's locality-aware order scheduler (``locality_orders``), per sample.

The first three are fixed (the same for every sample: ``fixed_order``); ``decode_orders`` draws any of them.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nar_bench.errors import NarBenchError
from nar_bench.nn.noise import RowNoise


def uniform_noise(shape: tuple[int, ...], device: torch.device,
                  generator: torch.Generator | RowNoise | None = None) -> Tensor:
    """(B, ...) uniforms from ``generator``'s stream (a ``RowNoise``: per sample, independent of the batch)."""
    if isinstance(generator, RowNoise):
        return generator.uniform((shape[0], math.prod(shape[1:]))).view(shape)
    return torch.rand(shape, device=device, generator=generator)


def random_orders(batch: int, num_tokens: int, device: torch.device,
                  generator: torch.Generator | RowNoise | None = None) -> Tensor:
    """(B, N) independent uniform permutations (argsort of uniforms)."""
    return uniform_noise((batch, num_tokens), device, generator).argsort(dim=1)


def order_token_steps(order: Tensor, counts: list[int]) -> Tensor:
    """(N,) decoding step of each raster cell, for one sample's ``order`` (N,) cut into steps of ``counts``."""
    step_of_position = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    steps = torch.empty(order.shape[0], dtype=torch.long)
    steps[order.cpu()] = step_of_position
    return steps


def halton_points(count: int, base: int) -> list[float]:
    """The first ``count`` points of the Halton (radical-inverse) sequence in ``base``, from index 1:
    1/2, 1/4, 3/4, 1/8, .. in base 2; 1/3, 2/3, 1/9, 4/9, .. in base 3."""
    points = []
    for i in range(1, count + 1):
        value, scale = 0, 1
        while i:
            i, digit = divmod(i, base)
            scale *= base
            value = value * base + digit
        points.append(value / scale)
    return points


@functools.lru_cache(maxsize=16)
def _halton_order(grid: tuple[int, int]) -> tuple[int, ...]:
    h, w = grid
    order: dict[int, None] = {}
    count = 0
    while len(order) < h * w:
        count = max(4 * h * w, 2 * count)
        rows = torch.floor(torch.tensor(halton_points(count, 2), dtype=torch.float32) * h).long()
        cols = torch.floor(torch.tensor(halton_points(count, 3), dtype=torch.float32) * w).long()
        order = dict.fromkeys((rows * w + cols).tolist())
    return tuple(order)


def halton_order(grid: tuple[int, ...]) -> Tensor:
    """(N,) raster indices of an H x W grid in 2D Halton order: point i is (floor(H x_i), floor(W y_i)),
    x in base 2 (row), y in base 3 (column), each cell at its first occurrence; as the official
    ``HaltonSampler.build_halton_mask`` of valeoai/Maskgit-pytorch (float32 points times the side,
    floored; duplicates dropped in order), except that the sequence runs until every cell appears (the
    official one stops at 10,000 points)."""
    check_2d("halton", grid)
    return torch.tensor(_halton_order(tuple(grid)))


def raster_order(grid: tuple[int, ...]) -> Tensor:
    """(N,) raster indices in raster order (row by row)."""
    return torch.arange(math.prod(grid))


def diagonal_order(grid: tuple[int, ...]) -> Tensor:
    """(N,) raster indices of an H x W grid by anti-diagonal i + j (NAR's order: Manhattan distance
    from the top-left corner), raster order within a diagonal."""
    check_2d("diagonal", grid)
    h, w = grid
    index = torch.arange(h * w)
    return (index // w + index % w).mul(h * w).add(index).argsort()


FIXED_ORDERS = {"raster": raster_order, "diagonal": diagonal_order, "halton": halton_order}
ORDERS = ("raster", "diagonal", "random", "halton", "locality")  # model.options.order of randar and lpd


def check_2d(order: str, grid: tuple[int, ...]) -> None:
    if len(grid) != 2:
        raise NarBenchError(f"model.options.order={order} orders a 2D grid; got grid {tuple(grid)}; "
                            "choose another model.options.order")


def check_order(order: str, valid: tuple[str, ...] = ORDERS, note: str = "") -> None:
    """One NarBenchError line naming the valid orders when ``order`` is not one of ``valid``."""
    if order not in valid:
        raise NarBenchError(f"model.options.order='{order}' is not valid; choose one of: {', '.join(valid)}{note}")


def fixed_order(order: str, grid: tuple[int, ...]) -> Tensor | None:
    """(N,) raster index decoded at each decode position for a fixed order (the same for every
    sample); None for the per-sample ones (random, locality)."""
    build = FIXED_ORDERS.get(order)
    return None if build is None else build(grid)


def decode_orders(order: str, grid: tuple[int, int], counts: list[int], batch: int, device: torch.device,
                  generator: torch.Generator | RowNoise | None = None, repulsion: int = 2) -> Tensor:
    """(B, N) raster index of each decode position, per sample, for ``order`` of ``ORDERS`` decoded in
    steps of ``counts`` (locality needs them; its first step one token)."""
    fixed = fixed_order(order, grid)
    if fixed is not None:
        return fixed.to(device).expand(batch, -1)
    n = math.prod(grid)
    if order == "random":
        return random_orders(batch, n, device, generator)
    check_order(order)
    noise = uniform_noise((batch, len(counts), n), device, generator)
    return locality_orders(grid, counts, noise.cpu(), repulsion).to(device)


def proximity_scores(decoded: Tensor) -> Tensor:
    """(B, H, W) bool decoded cells -> (B, H, W) float64 score of each cell: the sum of 1 / distance
    to the decoded cells among its 8 neighbours (LPD's ``proximity_score``). Orthogonal neighbours
    count 1, diagonal ones 1 / sqrt(2); held as two integer counts (shifted sums, exact) so equal
    scores compare equal exactly."""
    x = F.pad(decoded.long(), (1, 1, 1, 1))  # (B, H + 2, W + 2)
    h, w = decoded.shape[1:]

    def at(dy: int, dx: int) -> Tensor:
        return x[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    orthogonal = at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1)
    diagonal = at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)
    return orthogonal.double() + diagonal.double() / math.sqrt(2.0)


def locality_orders(grid: tuple[int, int], counts: list[int], noise: Tensor, repulsion: int,
                    proximity: float = 1.0) -> Tensor:
    """LPD's locality-aware order (``orders/lpd_order.py``, ``lpd_order_schedule``), batched:
    (B, N) raster indices in decode order, steps of ``counts`` (the first step one token).

    noise: (B, T, N) uniforms, T = len(counts): row 0 picks the first cell (argmax), row s ranks the
    cells of step s among equal proximity scores (the official random shuffle before its stable sort).
    Each later step ranks the undecoded cells by proximity score (descending), then:
    1. walks the cells scoring >= ``proximity`` in rank order and takes each one whose Chebyshev
       distance to every cell taken in this step exceeds ``repulsion``, until the step is full;
    2. fills the rest of the step by farthest point sampling from the cells taken in this step over
       the remaining cells (those scoring < ``proximity`` first, then the skipped ones, each in rank
       order; ties go to the earlier one), or takes all of them when they are too few.
    """
    h, w = grid
    b, n = noise.shape[0], h * w
    device = noise.device
    rows, cols = torch.arange(n, device=device) // w, torch.arange(n, device=device) % w
    chebyshev = torch.maximum((rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs())  # (N, N)
    squared = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    batch = torch.arange(b, device=device)
    decoded = torch.zeros(b, n, dtype=torch.bool, device=device)
    order = torch.empty(b, n, dtype=torch.long, device=device)
    first = noise[:, 0].argmax(1)
    order[:, 0], decoded[batch, first] = first, True
    done = counts[0]
    for s, size in enumerate(counts[1:], start=1):
        score = proximity_scores(decoded.view(b, h, w)).view(b, n).masked_fill(decoded, -1.0)  # decoded: last
        by_noise = noise[:, s].argsort(1)
        rank_to_cell = by_noise.gather(1, (-score.gather(1, by_noise)).argsort(dim=1, stable=True))
        rank = rank_to_cell.argsort(1)  # (B, N) rank of each cell
        near = (score >= proximity) & ~decoded
        taken = torch.zeros(b, size, dtype=torch.long, device=device)  # this step's cells, in the order taken
        count = torch.zeros(b, dtype=torch.long, device=device)
        blocked = torch.zeros(b, n, dtype=torch.bool, device=device)  # within ``repulsion`` of a taken cell
        chosen = torch.zeros(b, n, dtype=torch.bool, device=device)
        for k in range(int(near.sum(1).max())):  # 1. proximity-based selection
            cell = rank_to_cell[:, k]
            take = near[batch, cell] & ~blocked[batch, cell] & (count < size)
            if not take.any():
                if (count == size).all():
                    break
                continue
            taken[batch[take], count[take]] = cell[take]
            chosen[batch[take], cell[take]] = True
            blocked[take] |= chebyshev[cell[take]] <= repulsion
            count += take.long()
        rest = ~decoded & ~chosen  # 2. low-dependency selection
        rest_rank = rank + n * near.long()  # the skipped near cells after the far ones
        few = rest.sum(1) <= size - count
        nearest = torch.where(chosen.any(1, keepdim=True), torch.where(
            chosen[:, None, :], squared[None], torch.iinfo(torch.long).max).amin(-1), 0)  # (B, N) to the step's cells
        for _ in range(int((size - count).max())):
            need = count < size
            key = torch.where(rest, nearest * (2 * n + 1) + (2 * n - rest_rank), -1)  # farthest, then earliest
            key = torch.where(few[:, None], torch.where(rest, 2 * n - rest_rank, -1), key)  # too few: all in rank order
            cell = key.argmax(1)
            taken[batch[need], count[need]] = cell[need]
            rest[batch[need], cell[need]] = False
            nearest = torch.where(need[:, None], torch.minimum(nearest, squared[cell]), nearest)
            count += need.long()
        order[:, done : done + size] = taken
        decoded.scatter_(1, taken, True)
        done += size
    return order


class AnyOrderDecoding:
    """The order side that the any-order paradigms (randar, lpd) share, mixed in before their
    ``Paradigm`` base: ``options.order`` (and ``options.repulsion``) over ``ORDERS``, ``counts``
    tokens per step, and ``_orders`` (B, N), the orders their latest ``generate`` drew."""

    @classmethod
    def require_2d_grid(cls, codes) -> None:
        """Every order here is over an (H, W) grid; called before the backbone is built."""
        if len(codes.grid) != 2:
            raise NarBenchError(f"paradigm '{cls.name}' decodes 2D token grids (H, W); got grid {tuple(codes.grid)}")

    def step_counts(self) -> list[int]:
        """Tokens decoded at each step, the same for every sample and order."""
        return list(self.counts)

    def fixed_order(self) -> Tensor | None:
        """(N,) raster index decoded at each decode position for the fixed orders; None for the orders
        drawn per sample (random, locality)."""
        return fixed_order(self.options.order, self.grid)

    def decode_orders(self, batch: int, device: torch.device,
                      generator: torch.Generator | RowNoise | None = None) -> Tensor:
        """(B, N) raster index of each decode position, per sample."""
        order = self.fixed_order()
        if order is not None:
            return order.to(device).expand(batch, -1)
        return decode_orders(self.options.order, self.grid, self.counts, batch, device, generator,
                             self.options.repulsion)

    def schedule(self) -> list[Tensor]:
        order = self.fixed_order()
        if order is None:
            raise NarBenchError(f"{self.name} with model.options.order={self.options.order} draws a new order per "
                                "sample in every generate call: it has no fixed raster schedule; step_counts() gives "
                                "how many tokens each step decodes, token_steps() when the latest generate decoded "
                                "which")
        return list(order.split(self.counts))

    def token_steps(self, sample: int = 0) -> Tensor:
        if self._orders is None:
            if self.fixed_order() is None:
                raise NarBenchError(f"{self.name} records its decoding order in generate(); call it before "
                                    "token_steps()")
            return super().token_steps(sample)
        return order_token_steps(self._orders[sample], self.counts)

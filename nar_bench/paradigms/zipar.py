"""ZipAR (He et al., "ZipAR: Accelerating Autoregressive Image Generation through Spatial Locality",
arXiv 2412.04062): a decode-only order that runs a *raster* next-token checkpoint several rows at a
time, without retraining. ``model.options.order=zipar`` on the ``ar`` paradigm uses it.

Read from the official code, ThisisBillhe/ZipAR ``LlamaGen-ZipAR/autoregressive/models/generate_zipar.py``
(``generate``, ``decode_n_tokens_zipar``) with its ``autoregressive/models/gpt.py`` (KV cache and mask):

- Row 0 is decoded alone, one token a step (``decode_n_tokens`` for ``tokens_per_row`` tokens).
  Row 1 then starts from row 0's real last token, as raster order would.
- Every ongoing row produces one token a step. Row r + 1 (r >= 1) starts at the step after row r holds
  ``window`` tokens (``zipar_window_size``, 8 by default there), so the first token of each row from 2 on
  is produced ``window`` steps after the previous row's. Steps: 2 W + (H - 2) window on an H x W grid.
- A new row's first token is predicted, as in raster order, from the input at the raster slot before
  it, (r, W - 1), which is not decoded yet. The official loop feeds there an auxiliary copy of the
  latest decoded token of row r - 1, with that slot's rotary position; its output gives the new row's
  first token. The other inputs of a step are the tokens the previous step produced (the last token of a
  finished row included, its logits unused), in raster order.
- The official KV cache is indexed by raster slot and masked causally by raster position, and CFG is
  applied per step on the doubled batch as in LlamaGen.

Two differences, both so that a real token only ever attends to real tokens a raster-trained model had
before it (this module's ``decode_visibility``): the official cache holds zero keys and values in the
raster slots not decoded yet, which the causal mask lets every later query attend to (score 0, value 0),
and the auxiliary copy stays visible at slot (r, W - 1) to the queries after it until the real token
overwrites it. Here the cache is filled in feed order and a mask shows each input the condition, the
real tokens fed so far at earlier raster slots, and itself: the unfilled slots are hidden and the
auxiliary copy is seen by its own query only. Also: at ``window = W`` (and above it, which the official
loop never finishes) the previous row is complete when a row starts, so it starts from the real last
token as row 1 does and decoding is exactly raster order; the official loop at ``window = W`` feeds the
auxiliary copy into the same slot as the real token. ``window = 1`` (which the official loop's
bookkeeping does not handle) is allowed here: each row starts one step after the row above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nar_bench.errors import NarBenchError


@dataclass(frozen=True)
class ZipARPlan:
    """What each decoding step of ZipAR produces and feeds, on an H x W grid.

    ``steps[k]``: raster indices produced at step k, ascending. ``feeds[k]``: (source, slot) pairs fed
    after step k (k < last), in feed order: source is the raster index whose token is fed, slot the
    raster position (rotary row) it is fed at; source != slot marks a new row's auxiliary copy. The
    tokens of step k + 1 are predicted by the last ``len(steps[k + 1])`` inputs fed after step k, in
    order (``zipar_plan`` checks it)."""

    steps: list[list[int]]
    feeds: list[list[tuple[int, int]]]


def zipar_num_steps(grid: tuple[int, int], window: int) -> int:
    """Decoding steps of ZipAR on an H x W grid: 2 W + (H - 2) window (W alone for one row)."""
    h, w = grid
    return w if h == 1 else 2 * w + (h - 2) * min(window, w)


def check_window(grid: tuple[int, ...], window: int) -> None:
    if len(grid) != 2:
        raise NarBenchError(f"model.options.order=zipar decodes rows of a 2D grid; got grid {tuple(grid)}; "
                            "use model.options.order=raster")
    if not 1 <= window <= grid[1]:
        raise NarBenchError(f"model.options.zipar_window={window} cannot be realised on rows of {grid[1]} tokens: "
                            f"it must be between 1 and {grid[1]} (= raster order); ZipAR's default is 8")


def zipar_plan(grid: tuple[int, int], window: int) -> ZipARPlan:
    """The ZipAR schedule and feeds (module docstring) for ``window`` in 1..W."""
    check_window(grid, window)
    h, w = grid
    start = [0] + [w + (r - 1) * window for r in range(1, h)]  # step of each row's first token
    num_steps = zipar_num_steps(grid, window)
    steps: list[list[int]] = [[] for _ in range(num_steps)]
    for r in range(h):
        for c in range(w):
            steps[start[r] + c].append(r * w + c)

    def latest(row: int, step: int) -> int:
        """Raster index of the latest token of ``row`` produced at or before ``step``."""
        return row * w + min(w - 1, step - start[row])

    feeds = []
    for k in range(num_steps - 1):
        fed = [(p, p) for p in steps[k]]
        for r in range(2, h):
            if start[r] == k + 1 and start[r - 1] + w - 1 > k:  # row r starts while row r - 1 is unfinished
                fed.append((latest(r - 2, k), r * w - 1))
        feeds.append(fed)
        predecessors = [slot for _, slot in fed[len(fed) - len(steps[k + 1]):]]
        if predecessors != [p - 1 for p in steps[k + 1]]:  # the last inputs fed predict the next step, in order
            raise AssertionError(f"ZipAR plan: step {k + 1} is not predicted by the inputs fed after step {k}")
    return ZipARPlan(steps, feeds)


def decode_visibility(plan: ZipARPlan, cls_token_num: int) -> Tensor:
    """(cls + F, cls + F) bool over [condition tokens, the F inputs in feed order]: True where an input
    sees another while decoding. Condition tokens are causal among themselves and seen by every input;
    an input fed after step k sees the real tokens fed after steps <= k at earlier raster slots, and
    itself; an auxiliary copy is seen by its own query alone."""
    fed = [(k, src, slot) for k, step in enumerate(plan.feeds) for src, slot in step]
    batch = torch.tensor([k for k, _, _ in fed])
    slot = torch.tensor([s for _, _, s in fed])
    real = torch.tensor([src == s for _, src, s in fed])
    seen = (batch[None, :] <= batch[:, None]) & (slot[None, :] < slot[:, None]) & real[None, :]
    seen |= torch.eye(len(fed), dtype=torch.bool)
    n = cls_token_num + len(fed)
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:cls_token_num, :cls_token_num] = torch.ones(cls_token_num, cls_token_num, dtype=torch.bool).tril()
    mask[cls_token_num:, :cls_token_num] = True
    mask[cls_token_num:, cls_token_num:] = seen
    return mask

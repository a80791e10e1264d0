"""Shared torch plumbing of the trained hashers (wdht, ws-dsh, ws-hashnet, idea*), also used by
the concept classifiers (:mod:`cbir.concepts.classifiers`, :mod:`cbir.concepts.sentence_cnn`).

Imports torch at import time. :mod:`cbir.hashing.weak` and :mod:`cbir.hashing.idea` are
torch-free at import and import this module inside ``fit`` / ``encode`` / ``load``, so
``import cbir.hashing`` stays light (no torch).

* :func:`torch_session`: a seeded, thread-limited scope (``torch.random.fork_rng`` +
  ``manual_seed``; ``torch.set_num_threads`` and, through threadpoolctl, NumPy's BLAS
  and OpenMP pools limited to the same count, restored on exit), so training is
  deterministic for a seed and a thread count and leaves the caller's RNG alone. The
  BLAS limit matters: the many small in-batch matrix products (tag similarities) run
  ~10x slower with 2 BLAS threads than with 1 on a busy 2-core machine.
* :func:`minibatches`: seeded shuffled minibatches of item indices, each sorted (better
  locality when the rows come from a memory-mapped array).
* :func:`train_epochs`: the Adam loop shared by every stage; it records a training curve
  (one entry per epoch) and calls ``progress(epoch, loss)``. :class:`Adam` is a plain
  Adam (Kingma & Ba; same update as ``torch.optim.Adam`` without amsgrad, L2 weight
  decay): ``torch.optim`` optimizers import ``torch._dynamo`` on their first step, which
  costs 3-7 s per process on this CPU, more than a whole small training run.
* :func:`module_arrays` / :func:`load_module_arrays`: a module's ``state_dict`` as float32
  numpy arrays (for the safetensors file) and back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from cbir.errors import IndexMismatch

__all__ = [
    "Adam",
    "Progress",
    "load_module_arrays",
    "minibatches",
    "module_arrays",
    "torch_session",
    "train_epochs",
]

#: progress callback: (epoch number, mean training loss of that epoch)
Progress = Callable[[int, float], None]


@contextlib.contextmanager
def torch_session(seed: int | None = None, threads: int = 1) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads (and, if ``seed`` is given, a fresh seeded RNG).

    The global torch RNG state and thread count are restored on exit.
    """
    threads = max(1, int(threads))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with contextlib.ExitStack() as stack:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # pragma: no cover - threadpoolctl is a dependency
                pass
            else:
                stack.enter_context(threadpool_limits(limits=threads))
            if seed is not None:
                stack.enter_context(torch.random.fork_rng(devices=[]))
                torch.manual_seed(int(seed))
            yield
    finally:
        torch.set_num_threads(old_threads)


class Adam:
    """Adam (Kingma & Ba 2015) with L2 weight decay: the update of ``torch.optim.Adam`` (no amsgrad).

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``, with ``g += wd p``.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad if self.weight_decay == 0 else p.grad + self.weight_decay * p
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def minibatches(items: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffle ``items`` (m,) int64 with ``rng`` and yield sorted chunks of ``batch_size``.

    A last chunk with fewer than 2 items is merged into the previous one (a pairwise loss
    needs 2 items).
    """
    order = items[rng.permutation(len(items))]
    starts = list(range(0, len(order), batch_size))
    if len(starts) > 1 and len(order) - starts[-1] < 2:
        starts.pop()
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(order)
        yield np.sort(order[s:e])


def train_epochs(
    parameters: Iterable[torch.nn.Parameter],
    modules: list[torch.nn.Module],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batches: Callable[[int], Iterable[np.ndarray]],
    batch_loss: Callable[[np.ndarray, int], torch.Tensor | None],
    curve: list[dict[str, Any]],
    stage: str,
    epoch_offset: int = 0,
    progress: Progress | None = None,
) -> None:
    """Adam over ``epochs`` epochs; appends ``{"stage", "epoch", "loss", "seconds"}`` to ``curve``.

    batches(epoch) yields index arrays (one per step); batch_loss(indices, step) returns a
    scalar loss tensor, or None to skip a batch with nothing to learn (e.g. no pairs).
    Epoch numbers are 1-based and shifted by ``epoch_offset`` (later stages continue the
    numbering). The recorded loss is the mean over the epoch's non-skipped batches.
    """
    opt = Adam(parameters, lr=lr, weight_decay=weight_decay)
    step = 0
    for e in range(1, epochs + 1):
        for m in modules:
            m.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        for idx in batches(e):
            loss = batch_loss(idx, step)
            step += 1
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            count += 1
        mean = total / count if count else float("nan")
        epoch = epoch_offset + e
        curve.append(
            {"stage": stage, "epoch": epoch, "loss": mean, "seconds": round(time.perf_counter() - t0, 4)}
        )
        if progress is not None:
            progress(epoch, mean)
    for m in modules:
        m.eval()


def module_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """``module.state_dict()`` as C-contiguous float32 numpy arrays (same keys)."""
    return {
        k: np.ascontiguousarray(v.detach().cpu().to(torch.float32).numpy())
        for k, v in module.state_dict().items()
    }


def load_module_arrays(module: torch.nn.Module, arrays: dict[str, np.ndarray], what: str) -> None:
    """Load numpy arrays written by :func:`module_arrays`; a missing or misshapen one raises IndexMismatch."""
    state = module.state_dict()
    missing = sorted(set(state) - set(arrays))
    if missing:
        raise IndexMismatch(f"{what}: the file lacks model tensors {missing}; fit and save the hasher again")
    new = {}
    for k, ref in state.items():
        arr = arrays[k]
        if tuple(arr.shape) != tuple(ref.shape):
            raise IndexMismatch(
                f"{what}: tensor {k!r} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
            )
        new[k] = torch.from_numpy(np.array(arr, dtype=np.float32))
    module.load_state_dict(new)
    module.eval()

"""The peak of the tensor memory a block of code allocates and holds, counted op by op.

A process's resident memory says little about one chunk of an estimate: the C library keeps freed
heap for reuse (``pyro_vae.evaluate.retain_freed_memory`` asks it to keep up to 256 MiB), so two
identical runs of the same evaluation peaked 120 MiB apart. ``LiveTensors`` counts instead the
storages the operators inside it create, from their creation until the last tensor on them is
freed, and records the largest total: the numbers a chunk holds, as the evaluation's
``max_elements`` budget means them.

    with LiveTensors() as live:
        log_weight_terms(model, guide, x, samples)
    live.peak  # bytes

Storages made before the block (parameters, the observations, features computed once) are not
counted, nor are an operator's own scratch buffers, which never reach Python.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage(t):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # a sparse or other storage-less tensor
        return None


class LiveTensors(TorchDispatchMode):
    """Bytes of storages created inside the mode and still referenced (``live``), and their
    largest total so far (``peak``)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._owners: dict[int, list] = {}  # storage address -> [bytes, ids of the tensors on it]

    def _release(self, key: int, tensor_id: int) -> None:
        entry = self._owners.get(key)
        if entry is None:
            return
        entry[1].discard(tensor_id)
        if not entry[1]:
            self.live -= entry[0]
            del self._owners[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = {s.data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
                  for s in (_storage(t),) if s is not None}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = _storage(t)
            if storage is None or storage.nbytes() == 0:
                continue
            key = storage.data_ptr()
            if key not in self._owners:
                if key in before:
                    continue  # a view of, or a write into, a tensor made outside the block
                self._owners[key] = [storage.nbytes(), set()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            ids = self._owners[key][1]
            if id(t) not in ids:
                ids.add(id(t))
                weakref.finalize(t, self._release, key, id(t))
        return out

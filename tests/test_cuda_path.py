"""The GPU path, checked on CPU (issue 22, item 3): nothing in a distillation training step forces a host-device
copy from the model or loss code.

On a GPU every one of these is a copy to or from the host (and the host waits for the GPU there):

* explicit: ``Tensor.cpu``, ``.item``, ``.tolist``, ``.numpy``, ``.to(<device>)``;
* implicit conversions: ``int(t)``, ``float(t)``, ``bool(t)``, ``operator.index(t)``;
* data-dependent output sizes, which read a count back: ``torch.nonzero`` / ``Tensor.nonzero``, ``torch.unique``,
  ``torch.masked_select`` and boolean-mask indexing ``t[mask]``.

:class:`HostCopies` wraps each of them while the training loop (engine/training.py ``train``) runs, and records
the calls whose immediate caller is a file under ``relational_distill/models/`` or ``relational_distill/losses.py``.
Calls made while the data loader prepares a batch (a frame under ``relational_distill/data/`` or torch's
``torch/utils/data/`` on the stack: the dataset and the collate function, which voxelises the batch) are not
counted: with ``workers >= 1`` that runs in the loader's worker processes, on the CPU by design. Calls made inside
third-party code (spconv, torch) are not counted either: their CPU path is not the one they take on a GPU.

Known today, and marked ``xfail(strict=True)`` below: the plain L1 relational loss selects its off-diagonal
entries with a boolean mask (``_relational_plain`` in losses.py). When it is fixed, its test passes unexpectedly
and fails: drop its marker then. (The student's voxelisation, once inside its forward pass, is made by the data
loader's collate since the loader voxelises: models/voxels.py.)
"""
from __future__ import annotations

import operator
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import relational_distill
from relational_distill.engine import distill as distill_module
from relational_distill.engine.distill import distill
from relational_distill.losses import contrastive_loss, superpixel_pool

from .conftest import loss_forms, tiny_distill_config

PACKAGE = Path(relational_distill.__file__).resolve().parent
WATCHED = (PACKAGE / "models", PACKAGE / "losses.py")
LOADER = (PACKAGE / "data", Path(torch.utils.data.__file__).resolve().parent)


@dataclass(frozen=True)
class HostCall:
    what: str       # e.g. "Tensor.cpu", "int(tensor)", "tensor[bool mask]"
    file: str       # relative to the package folder, e.g. "models/sparse_unet.py"
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function}) {self.what}"


def _is_bool_tensor(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.bool


def _bool_index(args: tuple, kwargs: dict) -> bool:
    index = args[1] if len(args) > 1 else None
    return _is_bool_tensor(index) or (isinstance(index, tuple) and any(_is_bool_tensor(i) for i in index))


def _to_device(args: tuple, kwargs: dict) -> bool:
    """``Tensor.to`` given a target device (a str, a torch.device or another tensor), not just a dtype."""
    return "device" in kwargs or any(isinstance(a, (str, torch.device, torch.Tensor)) for a in args[1:])


def _line_of(path: Path, text: str) -> int | None:
    """The number of the first line of ``path`` holding ``text`` (None when it is gone)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    return None


class HostCopies:
    """Records host-device copies made from the files ``watched`` (folders or files) while :attr:`active`.

    ``calls`` is the list of :class:`HostCall` in call order."""

    # (owner, attribute, description, which calls count): methods of torch.Tensor and functions of torch
    TARGETS: tuple[tuple[object, str, str, Callable[[tuple, dict], bool] | None], ...] = (
        (torch.Tensor, "cpu", "Tensor.cpu", None),
        (torch.Tensor, "item", "Tensor.item", None),
        (torch.Tensor, "tolist", "Tensor.tolist", None),
        (torch.Tensor, "numpy", "Tensor.numpy", None),
        (torch.Tensor, "to", "Tensor.to(device)", _to_device),
        (torch.Tensor, "__int__", "int(tensor)", None),
        (torch.Tensor, "__float__", "float(tensor)", None),
        (torch.Tensor, "__bool__", "bool(tensor)", None),
        (torch.Tensor, "__index__", "index(tensor)", None),
        (torch.Tensor, "nonzero", "Tensor.nonzero", None),
        (torch.Tensor, "__getitem__", "tensor[bool mask]", _bool_index),
        (torch, "nonzero", "torch.nonzero", None),
        (torch, "unique", "torch.unique", None),
        (torch, "masked_select", "torch.masked_select", None),
    )

    def __init__(self, watched: tuple[Path, ...] = WATCHED) -> None:
        self.watched = tuple(p.resolve() for p in watched)
        self.calls: list[HostCall] = []
        self.active = False

    def _inside(self, filename: str) -> bool:
        path = Path(filename)
        return any(path == w or w in path.parents for w in self.watched)

    def _note(self, what: str, frame) -> None:
        caller = frame
        if not self._inside(caller.f_code.co_filename):
            return
        f = frame
        while f is not None:  # the loader's work (workers=0 runs it in this process) is not the step's
            if any(folder in Path(f.f_code.co_filename).resolve().parents for folder in LOADER):
                return
            f = f.f_back
        path = Path(caller.f_code.co_filename).resolve()
        file = path.relative_to(PACKAGE).as_posix() if PACKAGE in path.parents else path.name
        scope = caller  # a comprehension's frame: name the function it is written in
        while scope.f_code.co_name.startswith("<") and scope.f_back is not None \
                and scope.f_back.f_code.co_filename == caller.f_code.co_filename:
            scope = scope.f_back
        self.calls.append(HostCall(what, file, caller.f_lineno, scope.f_code.co_name))

    def _wrap(self, original: Callable, what: str, counts: Callable[[tuple, dict], bool] | None) -> Callable:
        recorder = self

        def wrapper(*args, **kwargs):
            if recorder.active and (counts is None or counts(args, kwargs)):
                recorder._note(what, sys._getframe(1))
            return original(*args, **kwargs)

        wrapper.__name__ = getattr(original, "__name__", what)
        wrapper.__doc__ = getattr(original, "__doc__", None)
        return wrapper

    @contextmanager
    def installed(self) -> Iterator["HostCopies"]:
        """Within the block, every target is wrapped (recording only while :attr:`active`)."""
        # (owner, name, what it resolves to, whether the owner itself holds it: else it is inherited)
        saved = [(owner, name, getattr(owner, name), name in vars(owner)) for owner, name, _, _ in self.TARGETS]
        try:
            for (owner, name, what, counts), (_, _, original, _) in zip(self.TARGETS, saved):
                setattr(owner, name, self._wrap(original, what, counts))
            yield self
        finally:
            for owner, name, original, own in saved:
                if own:
                    setattr(owner, name, original)
                else:  # inherited (torch.Tensor's methods from torch._C.TensorBase): inherit it again
                    delattr(owner, name)

    @contextmanager
    def recording(self) -> Iterator["HostCopies"]:
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def summary(self, prefix: str = "") -> str:
        """One line per distinct call site, with its count; '(none)' when there is none."""
        counts = Counter(str(c) for c in self.calls if c.file.startswith(prefix))
        return "\n".join(f"  {site}  x{n}" for site, n in sorted(counts.items())) or "  (none)"

    def of(self, prefix: str) -> list[HostCall]:
        return [c for c in self.calls if c.file.startswith(prefix)]


# -- the counter itself --------------------------------------------------------------------------------------------
def test_the_counter_sees_each_kind_of_host_copy():
    """Pointed at this file, it records one call of each kind made here, and none made from elsewhere."""
    rec = HostCopies((Path(__file__),))
    before = {(id(owner), name): getattr(owner, name) for owner, name, _, _ in HostCopies.TARGETS}
    t, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    with rec.installed(), rec.recording():
        t.cpu(), t[0].item(), t.tolist(), t.numpy(), t.to("cpu"), t.to(torch.float64)
        int(t[1]), float(t[1]), bool(t[1]), operator.index(t.long()[1])
        t.nonzero(), torch.nonzero(t), torch.unique(t), torch.masked_select(t, mask), t[mask], t[1:3]
        F.normalize(t[None], dim=1)  # torch's own code: not counted
    kinds = Counter(c.what for c in rec.calls)
    assert kinds == Counter({w: 1 for _, _, w, _ in HostCopies.TARGETS}), kinds
    assert all(c.function == "test_the_counter_sees_each_kind_of_host_copy" for c in rec.calls)
    after = {(id(owner), name): getattr(owner, name) for owner, name, _, _ in HostCopies.TARGETS}
    assert all(after[key] is before[key] for key in before)  # every target restored


# -- one distillation epoch ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def step_calls(town, store_dir, tmp_path_factory) -> HostCopies:
    """Host copies from model and loss code while the training loop of one short distillation epoch runs (the
    tiny town: 2 steps of 2 samples; relational L1 block-wise, the loss form of configs/distill_gpu.yaml)."""
    rec = HostCopies()
    real_train = distill_module.train

    def recorded_train(*args, **kwargs):
        with rec.recording():
            return real_train(*args, **kwargs)

    cfg = tiny_distill_config(loss="relational", relational_p=1, block_size=64, epochs=1, workers=0)
    distill_module.train = recorded_train
    try:
        with rec.installed():
            result = distill(town, store_dir, tmp_path_factory.mktemp("cuda-path"), cfg, quiet=True)
    finally:
        distill_module.train = real_train
    assert result.steps >= 1
    return rec


def test_a_training_step_makes_no_host_copies_in_model_code(step_calls):
    """The batch arrives voxelised (the loader's collate), so the student's convolutions, batch norms and head
    copy nothing to the host. The one call allowed is ``Voxels.to``: the engine moving the batch's voxels to the
    device, as it moves the points (a copy to the device, which the host need not wait for)."""
    calls = [c for c in step_calls.of("models/") if (c.file, c.function) != ("models/voxels.py", "to")]
    assert not calls, "host-device copies from the model code in one distillation epoch:\n" + \
        step_calls.summary("models/")


def test_a_training_step_makes_no_host_copies_in_loss_code(step_calls):
    assert not step_calls.of("losses.py"), "host-device copies from losses.py in one distillation epoch:\n" + \
        step_calls.summary("losses.py")


# -- every form of every loss, forward and backward ------------------------------------------------------------------
LOSSES = PACKAGE / "losses.py"
_MASK_LINE = _line_of(LOSSES, "cross[off].mean()")
_POOL_LINE = _line_of(LOSSES, "torch.unique(segment, return_inverse=True)")

FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    **loss_forms(),
    "contrastive-superpixels": lambda k, q: contrastive_loss(
        superpixel_pool(k, torch.arange(len(k)) % 50), superpixel_pool(q, torch.arange(len(q)) % 50)),
}
XFAIL_FORMS = {
    "relational-p1-plain": f"known: losses.py line {_MASK_LINE} `cross[off].mean() ... intra[off].mean()` selects "
                           f"the off-diagonal entries with a boolean mask, whose size is read back to the host",
    "contrastive-superpixels": f"known: losses.py line {_POOL_LINE} superpixel_pool's `torch.unique(segment)` has a "
                               f"data-dependent size (SLidR pooling, configs with superpixels only)",
}


@pytest.mark.parametrize("form", [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=XFAIL_FORMS[f]))
                                  if f in XFAIL_FORMS else f for f in FORMS])
def test_each_loss_form_makes_no_host_copies(form):
    """Forward and backward of each loss form on k, q (N=200, D=16): no call from losses.py copies to the host."""
    g = torch.Generator().manual_seed(0)
    k = F.normalize(torch.randn(200, 16, generator=g), dim=1).requires_grad_(True)
    q = F.normalize(torch.randn(200, 16, generator=g), dim=1)
    rec = HostCopies((LOSSES,))
    with rec.installed(), rec.recording():
        FORMS[form](k, q).backward()
    assert k.grad is not None and torch.isfinite(k.grad).all()
    assert not rec.calls, f"host-device copies from losses.py ({form}):\n" + rec.summary()


# -- every loss form under the training loop's float16 autocast ------------------------------------------------------
@pytest.mark.parametrize("form", list(FORMS))
def test_each_loss_form_trains_under_float16_autocast(form):
    """On CUDA the training loop runs the step (student and loss) under ``torch.autocast("cuda", float16)`` and
    the backward outside it (engine/training.py); emulated here with CPU autocast in float16, which casts matrix
    products to float16 as CUDA's does. A linear layer (16 -> 32) stands in for the student and its output is
    normalised in float32 as in engine/distill.py's step; N = 200 pairs. The loss and the layer's gradient must be
    finite."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 32)
    x, q = torch.randn(200, 16), F.normalize(torch.randn(200, 32), dim=1)
    with torch.autocast("cpu", dtype=torch.float16):
        k = F.normalize(head(x).float(), dim=1)
        loss = FORMS[form](k, q)
    loss.float().backward()
    assert torch.isfinite(loss.detach().float()), float(loss)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())

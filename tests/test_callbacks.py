"""Training-loop callbacks: the no-op base hooks and the scheduler plots."""
from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddm_fast.callbacks import Callback, EvaluateSchedulerCallback
from ddm_fast.scheduler import (BinarizedScheduler, CosineScheduler,
                                LinearScheduler)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ("scheduler_logsnr", "scheduler_density", "scheduler_signal")


def trained_binarized():
    scheduler = BinarizedScheduler(n_bins=20, ema_rate=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        gamma = scheduler(torch.rand(64, generator=gen))
        scheduler.update(gamma, torch.exp(-0.1 * gamma ** 2) + 0.05)
    return scheduler


def assert_png(path):
    assert path.is_file()
    content = path.read_bytes()
    assert len(content) > 1000
    assert content[:8] == PNG_MAGIC


def test_base_hooks_are_noops():
    callback = Callback()
    trainer = SimpleNamespace(scheduler=None, out_dir=None, step=0)
    assert callback.on_train_start(trainer) is None
    assert callback.on_train_batch_end(trainer, 1, None) is None
    assert callback.on_validation_end(trainer, 1, {"val_loss": 1.0}) is None
    assert callback.on_train_end(trainer) is None
    assert isinstance(EvaluateSchedulerCallback(), Callback)


# Runs ddm_fast.callbacks in a fresh interpreter where neither Lightning
# package can be imported (a None entry in sys.modules makes the import fail),
# i.e. as on a machine without Lightning installed.
WITHOUT_LIGHTNING = (
    "import sys; sys.modules['lightning'] = None; "
    "sys.modules['pytorch_lightning'] = None; "
    "import importlib.util; importlib.util.find_spec = "
    "lambda name, *a, _f=importlib.util.find_spec: None if name in "
    "('lightning', 'pytorch_lightning') else _f(name, *a); ")


def test_importing_callbacks_does_not_import_matplotlib():
    # Lightning itself imports matplotlib, so this holds without it.
    code = WITHOUT_LIGHTNING + ("import ddm_fast.callbacks; "
                                "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def test_plain_hooks_work_without_lightning(tmp_path):
    code = WITHOUT_LIGHTNING + (
        "from types import SimpleNamespace; "
        "from ddm_fast.callbacks import Callback, EvaluateSchedulerCallback; "
        "from ddm_fast.scheduler import LinearScheduler; "
        "assert Callback.__bases__ == (object,), Callback.__bases__; "
        "trainer = SimpleNamespace(scheduler=LinearScheduler(), "
        f"out_dir={str(tmp_path)!r}, step=3); "
        "callback = EvaluateSchedulerCallback(n_steps=11); "
        "callback.on_train_start(trainer); "
        "callback.on_validation_end(trainer, 3, {}); "
        "callback.on_train_end(trainer); "
        "print(sorted(p.name for p in (trainer.out_dir and "
        "__import__('pathlib').Path(trainer.out_dir) / 'scheduler')"
        ".iterdir()))")
    result = subprocess.run([sys.executable, "-c", code], check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == str(
        sorted(f"{n}_step000003.png" for n in NAMES))


@pytest.mark.parametrize("make_scheduler", [
    lambda: CosineScheduler(shift=0.5, gamma_min=-12., gamma_max=8.),
    trained_binarized,
], ids=["cosine", "binarized_after_updates"])
def test_figure_curves_equal_scheduler_values(make_scheduler):
    scheduler = make_scheduler()
    callback = EvaluateSchedulerCallback(n_steps=257)
    figures = callback.figures(scheduler)
    assert set(figures) == {"logsnr", "density", "signal"}

    time = torch.linspace(0, 1, 257)
    with torch.no_grad():
        gamma = scheduler(time).double()
        density = scheduler.get_density(scheduler(time)).double()
    alpha = torch.sigmoid(gamma).sqrt()
    expected = {"logsnr": (time, gamma), "density": (gamma, density),
                "signal": (time, alpha)}
    for name, (x, y) in expected.items():
        axes = figures[name].axes
        assert len(axes) == 1 and len(axes[0].lines) == 1
        data = axes[0].lines[0].get_xydata()
        np.testing.assert_allclose(data[:, 0], x.numpy(), rtol=1e-6,
                                   atol=1e-6)
        np.testing.assert_allclose(data[:, 1], y.numpy(), rtol=1e-6,
                                   atol=1e-7)
    assert figures["logsnr"].axes[0].get_xlabel() == "Time"
    assert figures["density"].axes[0].get_xlabel() == "log SNR"
    assert figures["signal"].axes[0].get_ylim() == (0, 1)


def test_density_figure_tracks_binarized_updates():
    scheduler = BinarizedScheduler(n_bins=10, ema_rate=0.5)
    callback = EvaluateSchedulerCallback(n_steps=101)
    before = callback.figures(scheduler)["density"].axes[0].lines[0]
    flat = before.get_ydata()
    np.testing.assert_allclose(flat, 1 / 20, rtol=1e-6)
    scheduler.update(torch.tensor([-9., -8.5, 9.]), torch.tensor([5., 5., 1.]))
    after = callback.figures(scheduler)["density"].axes[0].lines[0]
    gamma, density = after.get_xdata(), after.get_ydata()
    # the bin [-10, -8] now carries more density than [8, 10]
    assert density[gamma < -8.5].min() > 2 * density[gamma > 8.5].max()
    # still a probability density over [gamma_min, gamma_max]
    order = np.argsort(gamma)
    area = np.trapezoid(density[order], gamma[order]) \
        if hasattr(np, "trapezoid") else np.trapz(density[order], gamma[order])
    assert abs(area - 1) < 0.05


def test_save_writes_pngs(tmp_path):
    callback = EvaluateSchedulerCallback(n_steps=101)
    paths = callback.save(trained_binarized(), tmp_path / "new" / "dir")
    assert [p.name for p in paths] == [f"{n}.png" for n in NAMES]
    for path in paths:
        assert_png(path)
    stepped = callback.save(LinearScheduler(), str(tmp_path), step=42)
    assert [p.name for p in stepped] == [f"{n}_step000042.png" for n in NAMES]
    for path in stepped:
        assert_png(path)


def test_no_pyplot_figures_leak(tmp_path):
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    callback = EvaluateSchedulerCallback(n_steps=51)
    callback.save(LinearScheduler(), tmp_path)
    callback.figures(LinearScheduler())
    assert plt.get_fignums() == before


def test_on_validation_end_writes_into_out_dir(tmp_path):
    scheduler = trained_binarized()
    trainer = SimpleNamespace(scheduler=scheduler, out_dir=str(tmp_path),
                              step=7)
    callback = EvaluateSchedulerCallback(n_steps=65, every=2)
    for step in (7, 14, 21):
        callback.on_validation_end(trainer, step, {"val_loss": 0.5})
    written = sorted(p.name for p in (tmp_path / "scheduler").iterdir())
    # every=2: the first and the third validation
    assert written == sorted(f"{n}_step{s:06d}.png" for n in NAMES
                             for s in (7, 21))
    for name in written:
        assert_png(tmp_path / "scheduler" / name)


def test_on_validation_end_without_out_dir_or_off_rank_zero(tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    callback = EvaluateSchedulerCallback(n_steps=11)
    callback.on_validation_end(
        SimpleNamespace(scheduler=LinearScheduler(), out_dir=None, step=1),
        1, {})
    callback.on_validation_end(
        SimpleNamespace(scheduler=LinearScheduler(), out_dir=tmp_path,
                        step=2, rank=1), 2, {})
    assert list(tmp_path.iterdir()) == []


def test_works_in_float64_and_with_plain_callable(tmp_path):
    scheduler = CosineScheduler().double()
    values = EvaluateSchedulerCallback(n_steps=5).evaluate(scheduler)
    assert values["gamma"].dtype == torch.float64
    assert values["gamma"][0] == 10. and values["gamma"][-1] == -10.
    np.testing.assert_allclose(values["alpha"].numpy(),
                               1 / np.sqrt(1 + np.exp(-values["gamma"].numpy())))
    assert math.isclose(float(values["time"][2]), 0.5)


def test_arguments_validated(tmp_path):
    with pytest.raises(ValueError, match="n_steps"):
        EvaluateSchedulerCallback(n_steps=1)
    with pytest.raises(TypeError, match="n_steps"):
        EvaluateSchedulerCallback(n_steps=10.5)
    with pytest.raises(ValueError, match="every"):
        EvaluateSchedulerCallback(every=0)
    callback = EvaluateSchedulerCallback(n_steps=11)
    with pytest.raises(TypeError, match="scheduler"):
        callback.figures(object())
    with pytest.raises(TypeError, match="out_dir"):
        callback.save(LinearScheduler(), 3)
    with pytest.raises(ValueError, match="step"):
        callback.save(LinearScheduler(), tmp_path, step=-1)


def test_lightning_package_preference(monkeypatch):
    """lightning.pytorch first, pytorch_lightning when lightning is absent,
    None without either (the package lookups are faked: no import)."""
    import importlib
    import importlib.util

    from ddm_fast.callbacks import base
    installed = set()
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    monkeypatch.setattr(importlib, "import_module",
                        lambda name: f"module {name}")
    assert base._lightning_package() is None
    installed.add("pytorch_lightning")
    assert base._lightning_package() == "module pytorch_lightning"
    installed.add("lightning")
    assert base._lightning_package() == "module lightning.pytorch"


def test_figures_are_titled_with_what_they_show_and_the_step(tmp_path):
    callback = EvaluateSchedulerCallback(n_steps=11)
    titled = callback.figures(LinearScheduler(), step=250)
    for name, what in (("logsnr", "log-SNR"), ("density", "Density"),
                       ("signal", "Signal")):
        title = titled[name].axes[0].get_title()
        assert what in title and "training step 250" in title, title
    assert "step" not in callback.figures(LinearScheduler())["logsnr"].axes[0].get_title()
    with pytest.raises(ValueError, match="step"):
        callback.figures(LinearScheduler(), step=-1)

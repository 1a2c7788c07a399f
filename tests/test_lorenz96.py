"""Tests of the Lorenz-96 example: integrator, data cache, metrics, network,
and the whole pipeline on toy sizes."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

EXAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "examples", "lorenz96")


def _load(name: str):
    """Import an example module under a unique name (the example's plain
    module names, e.g. ``data``, must not clash with other tests)."""
    spec = importlib.util.spec_from_file_location(
        f"l96_example_{name}", os.path.join(EXAMPLE_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


data = _load("data")
metrics = _load("metrics")
network = _load("network")


def _load_plots():
    """plots.py imports ``metrics`` by its plain name (as main.py does): lend
    it ours for the import only, so it cannot shadow another test's module."""
    before = sys.modules.get("metrics")
    sys.modules["metrics"] = metrics
    try:
        return _load("plots")
    finally:
        if before is None:
            sys.modules.pop("metrics")
        else:
            sys.modules["metrics"] = before


plots = _load_plots()

TOY = data.L96Config(n_spinup=50, train_members=2, train_steps=60,
                     val_members=1, val_steps=20, test_members=1,
                     test_steps=40, subsample=2, seed=3)


# ------------------------------------------------------------------ data
def test_tendency_vanishes_at_rest_state_and_matches_formula():
    rest = np.full((3, 40), 8.0)
    np.testing.assert_allclose(data.lorenz96_tendency(rest, 8.0), 0.0)
    np.testing.assert_allclose(data.rk4_step(rest, 0.05, 8.0), rest)
    x = np.random.default_rng(0).standard_normal(40)
    i = 5
    expected = (x[i + 1] - x[i - 2]) * x[i - 1] - x[i] + 8.0
    assert data.lorenz96_tendency(x, 8.0)[i] == pytest.approx(expected)


def test_rk4_is_fourth_order():
    x0 = 8.0 + np.random.default_rng(1).standard_normal((2, 40))
    horizon = 0.2
    reference = data.integrate(x0, 64, horizon / 64, 8.0)[:, -1]
    errors = [np.abs(data.integrate(x0, n, horizon / n, 8.0)[:, -1] - reference).max()
              for n in (4, 8)]
    assert 12.0 < errors[0] / errors[1] < 20.0   # 2^4 = 16


def test_generated_states_are_on_the_attractor():
    states = data.generate_trajectories(
        data.L96Config(n_spinup=300, subsample=1), members=4, steps=300,
        rng=np.random.default_rng(0))
    assert states.shape == (4 * 300, 40) and states.dtype == np.float32
    # Climatology of L96 at F = 8: mean ~2.3, std ~3.6.
    assert 1.8 < states.mean() < 2.9
    assert 3.0 < states.std() < 4.2


def test_cache_is_reused_and_regenerated_when_parameters_change(tmp_path, capsys):
    first = data.load_or_generate(str(tmp_path), TOY)
    assert first["train"].shape == (2 * 30, 40)
    assert first["test"].shape == (20, 40)
    with open(tmp_path / "l96_params.json") as handle:
        assert json.load(handle)["seed"] == 3
    capsys.readouterr()
    again = data.load_or_generate(str(tmp_path), TOY)
    assert "loaded cached" in capsys.readouterr().out
    np.testing.assert_array_equal(again["train"], first["train"])
    changed = data.load_or_generate(
        str(tmp_path), data.L96Config(**{**TOY.__dict__, "seed": 4}))
    assert "generated" in capsys.readouterr().out
    assert not np.array_equal(changed["train"], first["train"])
    with open(tmp_path / "l96_params.json") as handle:
        assert json.load(handle)["seed"] == 4
    # Train and test come from independent initial states.
    assert metrics.nearest_distance(first["test"], first["train"]).min() > 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="train_steps"):
        data.L96Config(train_steps=0)
    with pytest.raises(ValueError, match="dt"):
        data.L96Config(dt=0.0)
    with pytest.raises(TypeError, match="config"):
        data.load_or_generate("/tmp/unused", config={"seed": 1})


# --------------------------------------------------------------- metrics
def test_hellinger_limits():
    assert metrics.hellinger([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-7)
    assert metrics.hellinger([1, 0], [0, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ"):
        metrics.hellinger([1, 2], [1, 2, 3])


def test_scores_separate_matching_from_shifted_distributions():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4000, 40))
    same = rng.standard_normal((4000, 40))
    shifted = same + 1.0
    assert metrics.marginal_hellinger(same, reference) < 0.05
    assert metrics.marginal_hellinger(shifted, reference) > 0.3
    assert metrics.joint_neighbour_hellinger(same, reference) < 0.06
    assert metrics.joint_neighbour_hellinger(shifted, reference) > 0.3
    # Power scaled by 4 -> 10 log10(4) = 6.02 dB at every wavenumber.
    assert metrics.log_spectral_distance(2 * reference, reference) == \
        pytest.approx(10 * np.log10(4.0))
    assert metrics.log_spectral_distance(reference, reference) == 0.0


def test_autocorrelation_of_a_moving_average():
    rng = np.random.default_rng(1)
    white = rng.standard_normal((20000, 40))
    smooth = white + np.roll(white, -1, axis=1)   # corr(lag 1) = 1/2
    acf = metrics.spatial_autocorrelation(smooth, 0.0)
    assert acf[0] == pytest.approx(1.0)
    assert acf[1] == pytest.approx(0.5, abs=0.01)
    assert abs(acf[2]) < 0.01
    assert metrics.autocorrelation_error(smooth, white) == pytest.approx(
        0.5 / np.sqrt(20), abs=0.01)


def test_memorisation_ratio():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((500, 40))
    test = rng.standard_normal((200, 40))
    copies = train[:200] + 1e-3 * rng.standard_normal((200, 40))
    scores = metrics.memorisation(copies, train, test)
    assert scores["memorisation_ratio"] < 0.01
    fresh = metrics.memorisation(rng.standard_normal((200, 40)), train, test)
    assert 0.9 < fresh["memorisation_ratio"] < 1.1


def test_valid_mask_ignores_masked_variables():
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((500, 40))
    samples = rng.standard_normal((500, 40))
    valid = np.ones(40, dtype=bool)
    valid[30:] = False
    scrambled = samples.copy()
    scrambled[:, 30:] = 100.0
    train = rng.standard_normal((300, 40))
    a = metrics.evaluate(samples, train, reference, valid=valid)
    b = metrics.evaluate(scrambled, train, reference, valid=valid)
    for key in a:
        assert a[key] == pytest.approx(b[key]), key
    with pytest.raises(ValueError, match="valid"):
        metrics.evaluate(samples, train, reference, valid=np.ones(39, bool))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.evaluate(samples * np.nan, train, reference)


# --------------------------------------------------------------- network
def test_network_is_shift_equivariant_and_uses_the_mask():
    torch.manual_seed(0)
    net = network.L96Denoiser(channels=8, n_blocks=2, embedding_dim=16)
    for block in net.blocks:       # leave the zero-initialised identity
        torch.nn.init.normal_(block.conv2.weight, std=0.1)
    z = torch.randn(3, 40)
    gamma = torch.rand(3, 1)
    out = net(z, normalized_gamma=gamma)
    assert out.shape == (3, 40)
    shifted = net(torch.roll(z, 5, dims=1), normalized_gamma=gamma)
    torch.testing.assert_close(shifted, torch.roll(out, 5, dims=1),
                               atol=1e-5, rtol=1e-5)
    mask = torch.ones(1, 40)
    mask[:, :10] = 0
    assert not torch.allclose(net(z, gamma, mask=mask), out)
    with pytest.raises(ValueError, match="in_tensor"):
        net(torch.randn(3, 1, 40), gamma)
    with pytest.raises(ValueError, match="channels"):
        network.L96Denoiser(channels=0)


# --------------------------------------------------------------- pipeline
TOY_FLAGS = ["--steps", "12", "--batch-size", "16", "--n-samples", "48",
             "--sampler-steps", "2", "--train-members", "2", "--train-steps",
             "60", "--test-members", "1", "--test-steps", "60", "--spinup",
             "20", "--optimal-train", "40", "--channels", "8", "--blocks", "1",
             "--val-every", "6", "--no-progress", "--threads", "1"]
FILES = ["samples.npy", "metrics.json", "marginals.png", "autocorrelation.png",
         "spectra.png", "hovmoller.png", "joint_neighbours.png", "loss.png",
         "overview.png",
         "scheduler_logsnr.png", "scheduler_density.png",
         "scheduler_signal.png", "train_log.csv", "train_log.jsonl",
         "checkpoint.pt"]


ROOT = os.path.dirname(os.path.dirname(EXAMPLE_DIR))


def _tree_env():
    """The environment of a subprocess that must import this tree's
    ddm_fast (main.py's own directory comes first on its path, not the
    repository root)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ,
            "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}


def _run_example(out_dir, *extra):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLE_DIR, "main.py"), "--out",
         str(out_dir), *TOY_FLAGS, *extra],
        capture_output=True, text=True, timeout=120, env=_tree_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mask_mode", ["none", "fixed", "random"])
def test_pipeline_on_toy_sizes_writes_every_output(tmp_path, mask_mode):
    stdout = _run_example(tmp_path, "--mask", mask_mode, "--fixed-masked", "6")
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (48, 40) and np.isfinite(samples).all()
    # the latent members, written by sample_ensemble as an xarray Dataset
    xr = pytest.importorskip("xarray")
    with xr.open_dataset(tmp_path / "ensemble.nc") as ensemble:
        assert ensemble["samples"].dims == ("member", "site")
        assert ensemble["samples"].shape == (48, 40)
        assert ensemble.attrs["members_written"] == 48
    with open(tmp_path / "metrics.json") as handle:
        report = json.load(handle)
    assert set(report["results"]) == {"model", "gaussian", "optimal"}
    for scores in report["results"].values():
        assert set(scores) >= {"marginal_hellinger", "joint_hellinger",
                               "autocorrelation_error",
                               "log_spectral_distance_db",
                               "memorisation_ratio"}
    beats = report["model_beats_gaussian"]
    assert set(beats) == {"marginal_hellinger", "joint_hellinger",
                          "autocorrelation_error", "log_spectral_distance_db"}
    for score, won in beats.items():
        assert won == (report["results"]["model"][score]
                       < report["results"]["gaussian"][score]), score
    assert "joint_hellinger" in stdout and "Gaussian baseline on" in stdout
    assert report["variance_ratio_model_test"] > 0
    # every phase announces an estimate and reports its duration
    for phase in ("data", "train", "sample", "optimal", "eval", "plots"):
        assert re.search(rf"^\[{phase}\] .*\(estimate: \d+ (s|min)", stdout, re.M), phase
        assert re.search(rf"^\[{phase}\] done in ", stdout, re.M), phase
        assert report["timings"][f"{phase}_s"] >= 0
    assert "step 12/12" in stdout       # the progress lines
    if mask_mode == "fixed":
        np.testing.assert_array_equal(samples[:, -6:], 0.0)
        assert np.abs(samples[:, :-6]).max() > 0


def test_random_mask_transform_is_deterministic():
    main = _load_main()
    transform = main.RandomMask(0.5)
    batch = {"data": torch.randn(64, 40)}
    first = transform(batch, torch.Generator().manual_seed(1))["mask"]
    second = transform(batch, torch.Generator().manual_seed(1))["mask"]
    assert torch.equal(first, second)
    assert 0.4 < float(first.mean()) < 0.6
    assert set(first.unique().tolist()) == {0.0, 1.0}


def _load_main():
    """main.py imports its siblings by their plain names; drop those from
    sys.modules again so they cannot shadow other tests' modules."""
    plain = ("data", "metrics", "network", "plots")
    before = {name: sys.modules.get(name) for name in plain}
    sys.path.insert(0, EXAMPLE_DIR)
    try:
        return _load("main")
    finally:
        sys.path.remove(EXAMPLE_DIR)
        for name, module in before.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_pipeline_under_torchrun_two_cpu_processes(tmp_path):
    """The example's own DDP path: two gloo ranks train, rank 0 evaluates."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         os.path.join(EXAMPLE_DIR, "main.py"), "--out", str(tmp_path),
         *TOY_FLAGS],
        capture_output=True, text=True, timeout=180, env=_tree_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("[train] training ") == 1  # rank 0 reports alone
    assert result.stdout.count("[train] done in ") == 1
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    assert np.load(tmp_path / "samples.npy").shape == (48, 40)


# ----------------------------------------------------------------- plots
@pytest.fixture
def captured_figures(monkeypatch):
    """The figures the plot functions build, kept open instead of closed."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return path
    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    for fig in figures:
        plots.plt.close(fig)


def _toy_sets(seed=0, n=400):
    rng = np.random.default_rng(seed)
    test = 2.3 + 3.6 * rng.standard_normal((n, 40))
    return test, {"model": 2.3 + 3.0 * rng.standard_normal((n, 40)),
                  "gaussian": 2.3 + 3.6 * rng.standard_normal((n, 40))}


def test_joint_plot_shares_one_labelled_log_density_scale(captured_figures):
    test, sets = _toy_sets()
    plots.plot_joint(sets, test, "unused.png", step=7)
    fig = captured_figures[0]
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 3                       # test, model, gaussian
    limits = {image.get_clim() for image in images}
    assert len(limits) == 1                       # one scale for every panel
    low, high = limits.pop()
    # the top of the scale is the largest log density of any panel
    edges = np.linspace(test.min(), test.max(), 41)
    tops = [np.max(plots.joint_log_density(x, edges)[np.isfinite(
        plots.joint_log_density(x, edges))]) for x in (test, *sets.values())]
    assert high == pytest.approx(max(tops)) and high - low == pytest.approx(4.0)
    colourbar = [ax for ax in fig.axes if not ax.images and ax.get_ylabel()]
    assert any("log$_{10}$ probability density" in ax.get_ylabel() for ax in colourbar)
    assert "after 7 training steps" in fig._suptitle.get_text()


def test_joint_density_ignores_masked_pairs():
    rng = np.random.default_rng(1)
    states = rng.standard_normal((200, 40))
    valid = np.ones(40, bool)
    valid[30:] = False
    scrambled = states.copy()
    scrambled[:, 30:] = 50.0
    edges = np.linspace(-4, 4, 21)
    np.testing.assert_array_equal(plots.joint_log_density(states, edges, valid),
                                  plots.joint_log_density(scrambled, edges, valid))


def test_hovmoller_colours_are_centred_on_the_test_mean(captured_figures):
    test, sets = _toy_sets()
    plots.plot_hovmoller(sets["model"], test, "unused.png", step=3)
    fig = captured_figures[0]
    low, high = fig.axes[0].images[0].get_clim()
    assert (low + high) / 2 == pytest.approx(test.mean())
    assert fig.axes[1].images[0].get_clim() == (low, high)
    bar = fig.axes[-1]
    assert f"centred on the test mean {test.mean():.2f}" in bar.get_ylabel()
    assert "after 3 training steps" in fig._suptitle.get_text()


def test_autocorrelation_plot_shows_differences_from_the_test_set(captured_figures):
    test, sets = _toy_sets()
    plots.plot_autocorrelation(sets, test, "unused.png", step=5)
    top, bottom = captured_figures[0].axes
    assert "after 5 training steps" in top.get_title()
    assert bottom.get_ylabel() == "difference from test"
    mean = float(test.mean())
    expected = (metrics.spatial_autocorrelation(sets["model"], mean)
                - metrics.spatial_autocorrelation(test, mean))[1:]
    np.testing.assert_allclose(bottom.lines[0].get_ydata(), expected)


def test_spectra_are_normalised_by_the_test_variance(captured_figures):
    test, sets = _toy_sets()
    plots.plot_spectra(sets, test, "unused.png", step=2)
    top, bottom = captured_figures[0].axes
    assert top.lines[0].get_ydata().sum() == pytest.approx(1.0)
    assert "total test variance" in top.get_ylabel()
    assert "dB" in bottom.get_ylabel() and "wavenumber" in bottom.get_xlabel()
    mean = float(test.mean())
    ratio_db = 10 * np.log10(metrics.power_spectrum(sets["model"], mean)
                             / metrics.power_spectrum(test, mean))
    np.testing.assert_allclose(bottom.lines[0].get_ydata(), ratio_db)
    # its RMS is the score the table prints
    assert np.sqrt(np.mean(ratio_db ** 2)) == pytest.approx(
        metrics.log_spectral_distance(sets["model"], test))


def test_every_figure_is_titled_with_the_training_step(captured_figures, tmp_path):
    test, sets = _toy_sets()
    log = tmp_path / "log.csv"
    log.write_text("step,split,loss,val_loss\n10,train,1.0,\n10,val,,0.9\n")
    plots.plot_marginals(sets, test, "unused.png", step=11)
    plots.plot_training_log(str(log), "unused.png", step=11)
    for fig in captured_figures:
        assert "after 11 training steps" in fig.axes[0].get_title()


def test_overview_tiles_every_figure(tmp_path):
    import matplotlib.image as mpimg
    paths = []
    for index, size in enumerate([(4, 3), (4, 3), (12, 3), (4, 3)]):
        fig = plots.plt.figure(figsize=size)
        paths.append(str(tmp_path / f"f{index}.png"))
        fig.savefig(paths[-1], dpi=20)
        plots.plt.close(fig)
    out = plots.plot_overview(paths + [None], str(tmp_path / "overview.png"),
                              heading="all")
    image = mpimg.imread(out)
    # rows: two small figures, the wide one alone, the last small one
    assert image.shape[1] == 18 * 80 and image.shape[0] > image.shape[1] / 2
    with pytest.raises(ValueError, match="paths"):
        plots.plot_overview([None], str(tmp_path / "none.png"))


def test_phase_clock_announces_an_estimate_and_reports_the_duration(capsys):
    main = _load_main()
    timings = {}
    with main.PhaseClock(timings).phase("demo", "a phase", 75.0):
        pass
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[demo] a phase (estimate: 1 min 15 s) ..."
    assert out[1].startswith("[demo] done in ") and "CPU time" in out[1]
    assert timings["demo_s"] >= 0
    with main.PhaseClock({}, verbose=False).phase("quiet", "x", 1.0):
        pass
    assert capsys.readouterr().out == ""


# ------------------------------------------------- the documented default run
RESULTS = os.path.join(EXAMPLE_DIR, "results", "default_run.json")


def test_readme_states_the_defaults():
    args = _load_main().parse_args(["--out", "unused"])
    with open(os.path.join(EXAMPLE_DIR, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    for phrase in (f"{args.steps} training steps", f"{args.n_samples} samples",
                   f"{args.sampler_steps} DPM-Solver++(2M) steps",
                   f"{args.optimal_train} training states"):
        assert phrase in readme, phrase
    assert args.sampler == "dpmpp2m"


def test_committed_default_run_is_the_one_the_readme_quotes():
    """The numbers the README quotes come from the committed result of a
    run at the defaults, which meets the example's targets."""
    main = _load_main()
    with open(RESULTS, encoding="utf-8") as handle:
        run = json.load(handle)
    defaults = vars(main.parse_args(["--out", "runs/lorenz96"]))
    for name, value in defaults.items():
        if name not in ("data_dir", "no_progress"):
            assert run["args"][name] == value, name
    with open(os.path.join(EXAMPLE_DIR, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    for name in ("model", "gaussian", "optimal"):
        for score in main.COMPARED:
            assert f"{run['results'][name][score]:.4f}" in readme, (name, score)
    assert f"{run['variance_ratio_model_test']:.4f}" in readme
    assert all(run["model_beats_gaussian"].values())
    assert abs(run["variance_ratio_model_test"] - 1) < 0.01

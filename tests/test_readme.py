"""The README's API tour runs as written."""
import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_api_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tour writes ensemble.nc
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## API tour\n\n```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["out"].loss)
    ensemble, mask = namespace["ensemble"], namespace["land_sea_mask"]
    assert ensemble.shape == (8, 4, 32, 64)
    assert (ensemble * ~mask == 0).all()
    x = namespace["x"]
    assert x.shape == (8, 40) and torch.isfinite(x).all()
    members = namespace["ds"]["samples"]
    assert members.shape == (16, 4, 32, 64) and (tmp_path / "ensemble.nc").exists()


ROOT = README.parent
DOCS = [README, ROOT / "csrc" / "README.md", ROOT / "benchmarks" / "README.md",
        ROOT / "examples" / "lorenz96" / "README.md", ROOT / "docs" / "math.md"]
# files the build writes (not in a clone before `pip install`)
GENERATED = {"ddm_fast/_build_config.json"}


def test_every_repository_path_the_docs_name_exists():
    top_level = {p.name for p in ROOT.iterdir()}
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        named = re.findall(r"`([\w.-]+/[\w./-]*)`", text)
        named += re.findall(r"\]\(([\w.-]+/[\w./-]*)\)", text)   # markdown links
        for path in named:
            if path in GENERATED or path.split("/")[0] not in top_level:
                continue
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing


def test_docs_stand_alone_without_internal_jargon():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        # (references to files outside the repository: tests/test_docs.py)
        for phrase in ("lent GPU", "lent machine", "next milestone"):
            assert phrase not in text, f"{doc.relative_to(ROOT)}: {phrase!r}"

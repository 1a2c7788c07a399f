"""The README's API tour runs as written."""
import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_api_tour_runs():
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

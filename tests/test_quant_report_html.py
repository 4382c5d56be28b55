"""``quant-report --html``: the page is rendered by a real headless Chromium (Debian's
``chromium``, installed by tools/ensure_tools.py) and the screenshot must show the charts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_obs._quant_report._html import CODE_COLOURS, FAITHFUL_COLOURS, PROJECTION_COLOURS
from bitnet_obs.cli import main
from bitnet_obs.quant import io
from tests._support import checkpoints as cp
from tests._support.tools import find_tool

pytest.importorskip("gguf")
pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
RGB = npt.NDArray[np.uint8]


def screenshot(page: Path, tmp_path: Path, height: int = 1900) -> RGB:
    chromium = find_tool("chromium", "chromium-browser")
    png = tmp_path / f"{page.stem}.png"
    profile = tmp_path / f"profile-{page.stem}"  # a fresh profile: nothing from earlier runs
    proc = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size=1100,{height}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert png.exists(), proc.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB"))


def pixels(img: RGB, colour: str, tol: int = 10) -> npt.NDArray[np.intp]:
    """Row indices of the pixels within *tol* of *colour* (per channel)."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], np.int16)
    near = (np.abs(img.astype(np.int16) - rgb) <= tol).all(axis=2)
    return np.nonzero(near)[0]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("html")
    master_path = cp.save_safetensors(d / "master.safetensors", cp.master_weights(4), "bf16")
    with io.open_checkpoint(master_path) as ckpt:
        master = {t.name: np.array(ckpt.read(t).values) for t in ckpt.weights()}
    bad = cp.convert_to_gguf(
        d / "bad.gguf", master, tamper={"model.layers.2.mlp.up_proj.weight": 0.1}
    )
    out = {"master": d / "master.html", "drift": d / "drift.html"}
    assert main(["quant-report", str(master_path), "--html", str(out["master"])]) == 0
    status = main(
        ["quant-report", str(bad), "--reference", str(master_path), "--html", str(out["drift"])]
    )
    assert status == 3
    return out


def test_master_weights_page_shows_the_per_layer_charts(
    pages: dict[str, Path], tmp_path: Path
) -> None:
    img = screenshot(pages["master"], tmp_path)
    lines = {p: pixels(img, c) for p, c in PROJECTION_COLOURS.items() if p is not None}
    assert all(len(rows) > 100 for rows in lines.values()), {p: len(r) for p, r in lines.items()}
    assert sum(len(r) for r in lines.values()) > 3000  # lines and markers, not just legends
    codes = [pixels(img, c) for c in CODE_COLOURS]
    assert all(len(rows) > 20000 for rows in codes), [len(r) for r in codes]  # stacked bars
    first_line = min(int(r.min()) for r in lines.values())
    assert first_line < min(int(r.min()) for r in codes)  # SQNR/cosine charts above the bars
    assert len(pixels(img, FAITHFUL_COLOURS[1])) == 0  # no reference: no drift chart


def test_reference_page_shows_the_drift(pages: dict[str, Path], tmp_path: Path) -> None:
    img = screenshot(pages["drift"], tmp_path)
    red, green = pixels(img, FAITHFUL_COLOURS[1]), pixels(img, FAITHFUL_COLOURS[0])
    assert len(red) > 2000, len(red)  # the tampered tensor's bar: 10% of codes
    assert len(green) > 500, len(green)  # the faithful ones: thin marks at 0
    codes = pixels(img, CODE_COLOURS[0])
    assert int(codes.min()) < int(red.min())  # the drift chart comes after the code fractions

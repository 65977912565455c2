"""The comparison's HTML report opens offline in headless Chromium: the leaderboard and
the embedded plots render (a screenshot is taken and is not blank)."""

import os
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# CI installs Chromium (.ci/run), so there a missing browser fails rather than skips.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium is not installed (apt-get install chromium)",
)


def chromium(*args, profile):
    assert CHROMIUM, "Chromium is required here: apt-get install chromium"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_compare_html_renders_table_and_plots(tuned_comparison, tmp_path):
    page = (tuned_comparison / "compare.html").as_uri()

    dom = chromium("--dump-dom", page, profile=tmp_path / "profile").stdout
    assert '<table id="leaderboard">' in dom
    assert dom.count("<tr>") == 3 and "<td>lora</td>" in dom and "<td>ia3</td>" in dom
    # The answer and the search are on the page: recommendation, tuned vs default
    # settings, the search spaces with their sources, the Pareto fronts.
    assert '<p id="recommendation"><strong>Best accuracy: ' in dom
    for section in ("tuning", "spaces", "pareto"):
        assert f'<ul id="{section}"><li>' in dom
    assert "Hu et al. 2021" in dom and "lr=" in dom
    for name in ("metric_vs_params", "pareto", "cost", "loss_curves", "search"):
        assert f'alt="{name}.png"' in dom

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,3200", page, profile=tmp_path / "profile")
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = (pixels < 0.9).any(axis=-1).mean()
    # Plot lines and bars are coloured; the table alone is black text on white.
    coloured = (np.ptp(pixels, axis=-1) > 0.2).mean()
    assert ink > 0.02, "the page rendered (almost) blank"
    assert coloured > 0.002, "no plot pixels: the embedded images did not render"

"""The simulation's plot."""

from __future__ import annotations

from PIL import Image

from shoeseg.simulation.plot import plot_curves


def test_plot_is_a_png_of_mean_and_band(tmp_path, sim_rows):
    png = plot_curves(sim_rows, tmp_path / "sim.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 600

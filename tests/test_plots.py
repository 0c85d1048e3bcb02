"""Image grids: colour images are drawn in colour, grey-level ones in grey."""

import matplotlib.image
import torch

from pyro_vae.plots import image_grid


def _rgb(path):
    return torch.from_numpy(matplotlib.image.imread(path)[..., :3].copy())


def test_colour_grids_keep_their_colours(tmp_path):
    images = torch.zeros(2, 3, 6, 6)
    images[0, 0] = 1.0  # a red square
    images[1, 2] = 1.0  # a blue one
    rgb = _rgb(image_grid(images, (3, 6, 6), tmp_path / "colour.png", nrow=2))
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)
    blue = (rgb[..., 2] > 0.9) & (rgb[..., 0] < 0.1) & (rgb[..., 1] < 0.1)
    assert red.sum() > 20 and blue.sum() > 20
    # the red square is left of the blue one, as the grid lays them out
    assert red.nonzero()[:, 1].float().mean() < blue.nonzero()[:, 1].float().mean()


def test_grey_grids_are_grey(tmp_path):
    rgb = _rgb(image_grid(torch.rand(4, 1, 6, 6), (1, 6, 6), tmp_path / "grey.png", nrow=2))
    assert torch.allclose(rgb[..., 0], rgb[..., 1]) and torch.allclose(rgb[..., 1], rgb[..., 2])
    assert rgb.std() > 0.1  # not a blank image

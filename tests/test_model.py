"""SVFNet: shapes on several grids, the in-plane/3D structure, checkpoints that load safely."""

from __future__ import annotations

import pytest
import torch

from svfnet.training import model as model_module
from svfnet.training.model import SVFNet, SVFNetConfig, load, save_checkpoint


@pytest.mark.parametrize("grid", [(16, 16, 4), (64, 64, 16), (24, 40, 6)])
def test_output_is_an_svf_on_the_input_grid(grid):
    net = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4)))
    out = net(torch.randn(2, 2, *grid))
    assert out.shape == (2, 3, *grid)
    assert out.abs().max() < 1e-2  # starts near the identity


def test_first_levels_are_in_plane_and_the_last_3d():
    # no normalisation here: instance statistics are taken over the whole volume
    net = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4), norm="none"))
    kernels = [m.kernel_size for m in net.encoders.modules() if isinstance(m, torch.nn.Conv3d)]
    assert kernels[0] == (3, 3, 1) and kernels[-1] == (3, 3, 3)
    assert net.head.kernel_size == (3, 3, 1)
    # an in-plane level never mixes slices: a change in slice 0 stays in slice 0 after level 1
    x = torch.zeros(1, 2, 16, 16, 4)
    y = x.clone()
    y[0, 0, 5, 5, 0] = 1.0
    with torch.no_grad():
        diff = net.encoders[0](y) - net.encoders[0](x)
    assert diff[..., 1:].abs().max() == 0 and diff[..., 0].abs().max() > 0


@pytest.mark.parametrize("grid", [(60, 64, 16), (64, 64, 15), (64, 64)])
def test_bad_grids_are_refused_with_the_rule(grid):
    with pytest.raises(ValueError, match="divisible by 8"):
        model_module.check_grid(grid)


def test_a_grid_with_one_voxel_at_the_coarsest_level_is_refused():
    with pytest.raises(ValueError, match="one voxel at the coarsest level"):
        model_module.check_grid((8, 8, 2))
    model_module.check_grid((16, 8, 2))  # two voxels there: trains


def test_model_refuses_a_bad_grid_before_computing():
    net = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4)))
    with pytest.raises(ValueError, match="got 20x16x4"):
        net(torch.zeros(1, 2, 20, 16, 4))


def test_bad_input_and_config():
    net = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4)))
    with pytest.raises(ValueError, match=r"\(N, 2, I, J, K\)"):
        net(torch.zeros(1, 3, 16, 16, 4))
    with pytest.raises(ValueError, match="'norm'"):
        SVFNetConfig(norm="layer")
    with pytest.raises(ValueError, match="'widths'"):
        SVFNetConfig(widths=(4, 8, 8))


def test_checkpoint_round_trip_and_corruption(tmp_path):
    net = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4), norm="group"))
    path = tmp_path / "model.pt"
    save_checkpoint(path, net)
    loaded = load(path)
    assert loaded.config == net.config and not loaded.training
    x = torch.randn(1, 2, 16, 16, 4)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable svfnet checkpoint"):
        load(broken)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an svfnet checkpoint"):
        load(other)
    payload = torch.load(path, weights_only=True)
    payload["config"]["widths"] = [8, 8, 8, 8]
    torch.save(payload, other)
    with pytest.raises(ValueError, match="do not match the configuration"):
        load(other)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")

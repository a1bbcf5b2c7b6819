"""AutoGrow in width: a growth widens every channel group of the stage by a quarter (at least one
channel), preserves the function, carries the optimizer's state through all the widenings at once,
stops at the width cap, and resumes by replay; `both` adds a block and widens."""
from __future__ import annotations

import math

import pytest
import torch

import graphmorph
from graphmorph import AutoGrow
from graphmorph.search.autogrow import AutoGrowConfig
from graphmorph.search.widths import stage_widths

EXAMPLE = torch.randn(2, 1, 8, 8)


def _seed(widths=(4, 6, 8)):
    torch.manual_seed(0)
    return graphmorph.models.build("Basic3ResNet-1-1-1", in_channels=1, widths=widths)


def _grower(grow, **options):
    return AutoGrow(_seed(), EXAMPLE, K=1, J=2, tau=1.0, finetune_epochs=1, seed=3, grow=grow, **options)


def _channels(model) -> dict[str, int]:
    """Each convolution's output channels, from its weight alone."""
    return {name: p.shape[0] for name, p in model.named_parameters() if p.dim() == 4}


@pytest.mark.parametrize("grow", ["both"])      # "both" widens as "width" does, and adds a block
def test_a_width_growth_widens_the_stage_by_a_quarter_and_preserves_the_function(grow):
    grower = _grower(grow, init="zero")     # the new block (both) silenced: the whole growth preserves
    before, x = grower.model, torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = before.eval()(x)
    change = grower.epoch_end(10.0)
    assert change.grew
    after = change.model
    with torch.no_grad():
        torch.testing.assert_close(after.eval()(x), expected, atol=1e-5, rtol=1e-5)
    old, new = _channels(before), _channels(after)
    for name, channels in old.items():   # stage 0 is conv1 (its stem) and layer1; the others keep their widths
        in_stage0 = name.startswith(("conv1", "layer1."))
        assert new[name] == (channels + max(1, math.ceil(0.25 * channels)) if in_stage0 else channels), name
    assert stage_widths(after)[1:] == stage_widths(before)[1:]
    assert change.text().endswith(f"(widths {','.join(map(str, stage_widths(after)))})")
    blocks = [b for b in graphmorph.find_stages(after)[0].blocks]
    assert len(blocks) == (2 if grow == "both" else 1)


def test_the_optimizer_state_follows_every_widening_of_the_stage():
    grower = _grower("width")
    optimizer = torch.optim.SGD(grower.model.parameters(), lr=0.1, momentum=0.9)
    grower.model(EXAMPLE).sum().backward()
    optimizer.step()
    old = {name: optimizer.state[p]["momentum_buffer"].clone() for name, p in grower.model.named_parameters()}
    change = grower.epoch_end(10.0)
    rebuilt = change.optimizer(optimizer)
    for name, p in change.model.named_parameters():
        buffer = rebuilt.state[p]["momentum_buffer"]
        assert buffer.shape == p.shape
        kept, was = buffer[buffer != 0].sort().values, old[name][old[name] != 0].sort().values
        assert torch.equal(kept, was), name            # every old entry carried, new channels at zero


def test_a_stage_stops_at_the_width_cap():
    grower = _grower("width", max_width=1.3)   # stage 0: 4 -> 5 channels, then 7 >= 1.3 x 4
    texts = [grower.epoch_end(accuracy).text() for accuracy in (10, 20, 30, 40)]
    assert "stage 0 reached the width cap (7 channels)" in texts[3]
    assert 0 not in grower.state.growing


def test_a_resumed_width_growth_replays_to_the_same_net():
    grower = _grower("width")
    for accuracy in (10, 20, 30):
        grower.epoch_end(accuracy)
    resumed = _grower("width")
    resumed.load_state_dict(grower.state_dict())
    assert _channels(resumed.model) == _channels(grower.model)
    assert graphmorph.history(resumed.model) == graphmorph.history(grower.model)


def test_width_settings_are_checked_and_old_checkpoints_read():
    with pytest.raises(graphmorph.ConfigError, match="grow must be one of depth, width, both"):
        _grower("sideways")
    with pytest.raises(graphmorph.ConfigError, match="max width must be > 1"):
        _grower("width", max_width=1.0)
    assert AutoGrowConfig.from_dict({"grow": False}).grow == "none"      # a train run saved before width growth
    assert AutoGrowConfig.from_dict({"grow": True}).grow == "depth"

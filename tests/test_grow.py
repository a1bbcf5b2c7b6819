"""grow: the rewrite, its initialisers' promises, naming, verification, refusals and replay."""
import copy

import pytest
import torch
from hypothesis import given, strategies as st, target

import graphmorph
import transforms
from graphmorph.graph.history import history
from graphmorph.graph.layers import LayerSurgery
from graphmorph.models import arch_of, build, parse_arch
from graphmorph.testing import assert_preserves_function, assert_valid_rewrite, cnns, randomize_state, seed_nets
from graphmorph.graph.verify import parameter_count
from zoo import ZOO

def grown_depths(arch: str, stages: list[int]) -> str:
    cls, depths = parse_arch(arch)
    depths = list(depths)
    for s in stages:
        depths[s] += 1
    return f"{cls.family}-" + "-".join(map(str, depths))


def block_params(gm, name):
    return sum(p.numel() for n, p in gm.named_parameters() if n.startswith(name + "."))


@given(spec=seed_nets(families=("Basic3ResNet", "Basic4ResNet", "Bottleneck4ResNet"), max_depth=2, max_size=24),
       stages=st.lists(st.integers(0, 3), min_size=1, max_size=6), data=st.data())
def test_zero_init_growth_preserves_the_function_exactly(spec, stages, data):
    x = spec.example_input(batch=3, seed=1)
    gm = graphmorph.capture(spec.build(), x)
    stages = [s % len(graphmorph.find_stages(gm)) for s in stages]
    current = gm
    for s in stages:
        before = current
        old_state = {k: v.clone() for k, v in before.state_dict().items()}
        current = transforms.grow(before, stage=s, init="zero",
                                  generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
        new_block = history(current)[-1]["new_block"]
        assert_valid_rewrite(before, current, x, param_delta=block_params(current, new_block))
        assert all(torch.equal(old_state[k], v) for k, v in before.state_dict().items())  # gm untouched
        kept = current.state_dict()
        assert all(torch.equal(old_state[k], kept[k]) for k in old_state)  # old parameters bitwise kept
    diffs = assert_preserves_function(gm, current, x, modes=("eval", "train"), atol=1e-10)
    target(max(diffs.values()), label="zero-init float64 max abs diff")  # --hypothesis-show-statistics
    assert arch_of(current) == grown_depths(spec.arch, stages)


@given(spec=seed_nets(families=("Plain3Net", "Plain4Net"), max_depth=2, max_size=24),
       stages=st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_identity_init_grows_plain_nets_as_morphisms_in_eval_mode(spec, stages):
    x = spec.example_input(batch=2, seed=2)
    gm = graphmorph.capture(spec.build(), x)
    stages = [s % len(graphmorph.find_stages(gm)) for s in stages]
    current = gm
    for s in stages:
        current = transforms.grow(current, stage=s, init="identity")
    assert_preserves_function(gm, current, x, modes=("eval",), atol=1e-6)
    assert arch_of(current) == grown_depths(spec.arch, stages)
    assert parameter_count(current) > parameter_count(gm)


@pytest.mark.parametrize("name, stage", [
    ("PreActResNet", 0), ("PreActResNet", 1), ("PlusEqualsResNeXt", 1), ("SEResNet", 1),
    ("MobileNetV2ish", 1), ("FunctionalNet", 1), ("InlineResidualNet", 0), ("ParentAddNet", 0),
])
def test_zero_growth_preserves_third_party_nets(name, stage):
    factory, size, expected = ZOO[name]
    x = torch.randn(3, 3, size, size)
    gm = graphmorph.capture(factory(), x)
    grown = transforms.grow(gm, stage=stage, init="zero")
    assert_preserves_function(gm, grown, x, modes=("eval", "train"))
    assert len(graphmorph.find_stages(grown)[stage].blocks) == len(expected[stage]) + 1


def test_projection_block_as_template_stacks_its_shape_preserving_form():
    x = torch.randn(2, 3, 16, 16)
    gm = graphmorph.capture(ZOO["ProjectionResNet"][0](), x)
    grown = transforms.grow(gm, after="layer2.0", init="zero")
    new = history(grown)[-1]["new_block"]
    assert new == "layer2.2"
    blocks = {b.name: b for b in graphmorph.find_blocks(grown)}
    assert blocks[new].shortcut == "identity" and blocks[new].growable
    conv1 = grown.get_submodule("layer2.2.conv1")
    assert (conv1.in_channels, conv1.stride) == (16, (1, 1))
    order = [b.name for b in graphmorph.find_stages(grown)[1].block_info]
    assert order == ["layer2.0", "layer2.2", "layer2.1"]  # inserted right after its template
    assert_preserves_function(gm, grown, x)


def test_growth_resizes_layers_with_the_registry_it_is_given():
    """A user layer the default registry cannot resize is refused there and grows with a registry
    that knows it; the default registry stays as it was."""
    class UserConv(torch.nn.Conv2d):
        pass

    def with_in_channels(conv, channels):
        return UserConv(channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=False)

    def unit_stride(conv):
        return UserConv(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=False)

    x = torch.randn(2, 3, 16, 16)
    gm = graphmorph.capture(ZOO["ProjectionResNet"][0](), x)
    registry = graphmorph.Registry.default().copy()
    refusing = LayerSurgery(lambda m: m.in_channels, lambda m, c: (_ for _ in ()).throw(ValueError("not resizable")))
    registry.register(torch.nn.Conv2d, layer=refusing)
    with pytest.raises(graphmorph.RewriteError, match="cannot stack a shape-preserving copy of block 'layer2.0': not"):
        transforms.grow(gm, after="layer2.0", init="zero", registry=registry)
    registry.register(torch.nn.Conv2d, layer=LayerSurgery(lambda m: m.in_channels, with_in_channels, unit_stride))
    grown = transforms.grow(gm, after="layer2.0", init="zero", registry=registry)
    assert type(grown.get_submodule("layer2.2.conv1")) is UserConv
    assert_preserves_function(gm, grown, x)
    default = transforms.grow(gm, after="layer2.0", init="zero")
    assert type(default.get_submodule("layer2.2.conv1")) is torch.nn.Conv2d


def test_a_norm_resized_for_a_copy_keeps_its_subclass_and_settings_with_fresh_statistics():
    class NormAct(torch.nn.BatchNorm2d):          # timm's BatchNormAct2d: a norm with its activation
        def __init__(self, c):
            super().__init__(c, eps=1e-3, momentum=0.01)
            self.act = torch.nn.SiLU()

    norm = NormAct(8)
    with torch.no_grad():
        norm.running_mean.fill_(3.0)
    resized = graphmorph.Registry.default().layer_surgery(norm).with_in_channels(norm, 5)
    assert type(resized) is NormAct and isinstance(resized.act, torch.nn.SiLU)
    assert (resized.num_features, resized.eps, resized.momentum) == (5, 1e-3, 0.01)
    assert resized.weight.shape == resized.running_mean.shape == (5,)
    assert torch.equal(resized.running_mean, torch.zeros(5)) and torch.equal(resized.weight, torch.ones(5))
    assert norm.num_features == 8 and torch.equal(norm.running_mean, torch.full((8,), 3.0))   # untouched


def test_new_blocks_get_fresh_parameters_and_deterministic_names():
    gm = graphmorph.capture(build("Basic3ResNet-2-1-1", widths=(4, 8, 8)), torch.zeros(1, 3, 8, 8))
    a = transforms.grow(gm, stage=0, init="gau", generator=torch.Generator().manual_seed(5))
    b = transforms.grow(gm, stage=0, init="gau", generator=torch.Generator().manual_seed(5))
    c = transforms.grow(gm, stage=0, init="gau", generator=torch.Generator().manual_seed(6))
    assert history(a)[-1]["new_block"] == "layer1.2" and "layer1.2.conv1.weight" in a.state_dict()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.get_submodule("layer1.2.conv1").weight, c.get_submodule("layer1.2.conv1").weight)
    assert not torch.equal(a.get_submodule("layer1.2.conv1").weight, gm.get_submodule("layer1.1.conv1").weight)
    assert type(a.get_submodule("layer1.2.conv1")) is torch.nn.Conv2d


@pytest.mark.parametrize("init", ["uni", "gau"])
def test_noise_init_draws_the_configured_distribution(init):
    gm = graphmorph.capture(build("Bottleneck4ResNet-1-1-1-1", widths=(2, 2, 2, 256)), torch.zeros(1, 3, 8, 8))
    grown = transforms.grow(gm, stage=3, init=init, std=0.5, generator=torch.Generator().manual_seed(0))
    scale = grown.get_submodule("layer4.1.bn3").weight.detach().double()  # 1024 draws
    shift = grown.get_submodule("layer4.1.bn3").bias.detach()
    n = scale.numel()
    assert n == 1024
    assert abs(float(scale.mean())) < 4 * 0.5 / n ** 0.5           # within four standard errors
    assert abs(float(scale.std()) - 0.5) < 4 * 0.5 / (2 * n) ** 0.5
    if init == "uni":
        assert float(scale.abs().max()) <= 0.5 * 3 ** 0.5
    assert torch.count_nonzero(shift) == 0


def test_grow_replays_to_the_same_architecture_and_parameters():
    x = torch.zeros(1, 3, 16, 16)
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(4, 8, 8)), x)
    fresh = copy.deepcopy(gm)
    for stage, init in [(0, "gau"), (2, "zero"), (0, "uni"), (1, "gau")]:
        gm = transforms.grow(gm, stage=stage, init=init)
    replayed = transforms.replay(fresh, history(gm))
    assert arch_of(replayed) == arch_of(gm) == "Basic3ResNet-3-2-2"
    assert replayed.state_dict().keys() == gm.state_dict().keys()
    assert all(torch.equal(v, replayed.state_dict()[k]) for k, v in gm.state_dict().items())
    assert history(replayed) == history(gm)


@pytest.mark.parametrize("kwargs, message", [
    ({"stage": 3}, r"stage 3 is out of range: the net has 3 stages \(0..2\)"),
    ({"stage": -1}, "out of range"),
    ({"after": "layer9.0"}, r"no block named 'layer9.0'; the net's blocks are: layer1.0, layer2.0, layer3.0"),
    ({}, "exactly one of stage"),
    ({"stage": 0, "after": "layer1.0"}, "exactly one of stage"),
    ({"stage": 0, "init": "ones"}, "unknown init 'ones'; choose one of zero, uni, gau, adam, identity"),
    ({"stage": 0, "std": 0}, "std must be a positive number"),
    ({"stage": 0, "init": "identity"}, "init='identity' is for plain conv-BN-ReLU blocks, but block 'layer1.0' is residual"),
    ({"stage": 0, "init": "adam"}, "pass data="),
])
def test_refusals_on_a_residual_net(kwargs, message):
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(2, 2, 2)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match=message):
        transforms.grow(gm, **kwargs)


def test_zero_init_on_a_plain_block_is_refused():
    gm = graphmorph.capture(build("Plain3Net-1-1-1", widths=(2, 2, 2)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match="block 'layer1.0' is a plain block with no shortcut.*use init='identity'"):
        transforms.grow(gm, stage=0, init="zero")


def test_a_block_that_cannot_be_made_shape_preserving_is_refused():
    gm = graphmorph.capture(ZOO["TinyDenseNet"][0](), torch.zeros(1, 3, 16, 16))
    with pytest.raises(graphmorph.RewriteError, match="'block1.1' is not shape-preserving.*concatenates its input"):
        transforms.grow(gm, stage=0, init="gau")


def test_a_depthwise_first_layer_takes_the_channels_of_the_shape_preserving_copy():
    """Was refused ('Conv2d with groups=8 cannot change its input channels alone'): the copy of a
    block that starts depthwise reads the block's output channels, so its depthwise conv takes them."""
    from zoo import InvertedResidual

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), InvertedResidual(8, 16, 2, expand=1),
                              InvertedResidual(16, 16, 1, expand=1))
    gm = graphmorph.capture(net, torch.zeros(1, 3, 16, 16))
    assert [s.blocks for s in graphmorph.find_stages(gm)] == [("1", "2")]
    grown = transforms.grow(gm, after="1", init="gau")
    depthwise = next(m for m in grown.get_submodule(history(grown)[-1]["new_block"]).modules()
                     if isinstance(m, torch.nn.Conv2d))
    assert (depthwise.in_channels, depthwise.groups, depthwise.stride) == (16, 16, (1, 1))
    grown = transforms.grow(gm, after="2", init="zero")  # its shape-preserving sibling grows too
    assert [s.blocks for s in graphmorph.find_stages(grown)] == [("1", "2", "3")]


def test_grow_refuses_uncaptured_models_and_replay_refuses_unknown_rewrites():
    with pytest.raises(graphmorph.RewriteError, match="graphmorph.capture"):
        transforms.grow(build("Plain3Net-1-1-1"), stage=0)
    gm = graphmorph.capture(build("Plain3Net-1-1-1", widths=(2, 2, 2)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match="unknown rewrite 'shrink'"):
        transforms.replay(gm, [{"rewrite": "shrink"}])
    with pytest.raises(graphmorph.RewriteError, match="grow record lacks 'seed'"):
        transforms.replay(gm, [{"rewrite": "grow", "after": "layer1.0", "init": "gau", "std": 1.0}])


@pytest.fixture
def registered_inits():
    """Growth inits registered for one test, unregistered after it."""
    names = []

    def register(init):
        names.append(init.name)
        return transforms.register_growth_init(init)
    yield register
    for name in names:
        transforms.GROWTH_INITS.pop(name, None)


def _quarter(layer, std, seed):
    layer.weight.fill_(0.25)
    layer.bias.zero_()


def test_a_registered_growth_init_sets_each_new_branch_and_replays_by_name(registered_inits):
    registered_inits(transforms.GrowthInit("quarter", _quarter))
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(2, 4, 4)), torch.zeros(1, 3, 8, 8))
    grown = transforms.grow(gm, stage=1, init="quarter", generator=torch.Generator().manual_seed(0))
    new_norm = grown.get_submodule(f"{history(grown)[-1]['new_block']}.bn2")
    assert torch.all(new_norm.weight == 0.25) and torch.all(new_norm.bias == 0)
    replayed = transforms.replay(gm, history(grown))
    assert all(torch.equal(v, replayed.state_dict()[k]) for k, v in grown.state_dict().items())
    assert graphmorph.AutoGrow(gm, torch.zeros(1, 3, 8, 8), J=4, init="quarter").init == "quarter"
    with pytest.raises(ValueError, match="'zero' is registered already"):
        transforms.register_growth_init(transforms.GrowthInit("zero", _quarter))
    with pytest.raises(graphmorph.RewriteError, match="register yours with transforms.register_growth_init"):
        transforms.grow(gm, stage=1, init="quater")


def test_verification_catches_an_init_that_breaks_its_promise(registered_inits):
    registered_inits(transforms.GrowthInit("forgets", lambda layer, std, seed: None,   # should silence the branch
                                           preserves=(("eval",), 1e-10)))
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(2, 4, 4)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match="should preserve the function in eval mode but changed the output"):
        transforms.grow(gm, stage=1, init="forgets")


class _PlainTensorScale(torch.nn.Module):
    """Holds a float32 tensor that is neither a parameter nor a buffer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)
        self.scale = torch.tensor([2.0])

    def forward(self, x):
        return self.conv(x) * self.scale


def _seeded_two_channel_resnet() -> torch.nn.Module:
    """Built under its own seed: with two channels, some draws leave a ReLU dead to the change below,
    so the weights must not depend on the tests collected before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build("Basic3ResNet-1-1-1", widths=(2, 2, 2))


@pytest.mark.parametrize("model", [_seeded_two_channel_resnet(), _PlainTensorScale()],
                         ids=["parameters and buffers", "plain tensor attribute"])
def test_float64_comparison_leaves_the_models_untouched_and_sees_a_change(model):
    from graphmorph.graph.verify import output_differences

    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))   # seeded: the draw must not depend on the tests before
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    same = output_differences(model, model, x)
    assert same == {"eval": 0.0, "train": 0.0}
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(t.dtype != torch.float64 for t in model.state_dict().values())
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-6)
    assert min(output_differences(model, changed, x).values()) > 0


@pytest.mark.gpu
def test_growth_on_cuda_keeps_the_model_on_the_gpu_and_preserves_it():
    x = torch.randn(2, 3, 16, 16, device="cuda")
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(4, 8, 8)).cuda(), x)
    grown = transforms.grow(transforms.grow(gm, stage=1, init="zero"), stage=0, init="gau")
    assert all(p.is_cuda for p in grown.parameters()) and all(b.is_cuda for b in grown.buffers())
    assert_preserves_function(gm, transforms.grow(gm, stage=1, init="zero"), x)
    assert graphmorph.find_stages(grown)[1].blocks == ("layer2.0", "layer2.1")


def test_a_float64_model_grows_float64_layers():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = graphmorph.capture(build("Plain3Net-1-1-1", widths=(2, 4, 4)).double(), x)
    grown = transforms.grow(gm, stage=2, init="identity")
    assert {p.dtype for p in grown.parameters()} == {torch.float64}
    assert_preserves_function(gm, grown, x, modes=("eval",), atol=1e-6)


@given(spec=cnns(max_pieces=3))
def test_the_trial_growth_agrees_with_growth_on_generated_cnns(spec):
    """What AutoGrow decides from `growth_refusal` before training holds when it grows: a stage
    found growable grows by one block into a valid graph; a refused one names its block."""
    x = spec.example_input()
    gm = graphmorph.capture(spec.build(), x)
    for stage in graphmorph.find_stages(gm):
        reason = transforms.growth_refusal(gm, stage.index)
        if reason is not None:
            assert any(f"'{name}'" in reason for name in stage.blocks), reason
            continue
        grown = transforms.grow(gm, stage=stage.index, init="gau")
        added = parameter_count(grown) - parameter_count(gm)
        assert_valid_rewrite(gm, grown, x, param_delta=added)
        depths = [len(s.blocks) for s in graphmorph.find_stages(grown)]
        assert depths[stage.index] == len(stage.blocks) + 1


def test_replay_refuses_a_grow_record_whose_stage_is_not_its_blocks():
    """A history's "stage": 99 was carried into the replayed net's history unchecked."""
    gm = graphmorph.capture(graphmorph.models.build("Basic3ResNet-1-1-1", num_classes=4, in_channels=1),
                            torch.randn(2, 1, 8, 8))
    records = graphmorph.history(transforms.grow(gm, stage=0, init="zero"))
    with pytest.raises(graphmorph.RewriteError, match="the record says stage 99, but block 'layer1.0' is in stage 0"):
        transforms.replay(gm, [{**records[0], "stage": 99}])
    assert graphmorph.history(transforms.replay(gm, records))[0]["stage"] == 0


def test_an_identity_refusal_names_the_layers_not_the_copys_module_names():
    """It said "block '3' is 3_g1 -> 4_g1": the names of the copy graphmorph had just made."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Hardswish(),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Hardswish(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    gm = graphmorph.capture(model, torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match=r"block '2' is Conv2d -> Hardswish$"):
        transforms.grow(gm, after="2", init="identity")


def test_a_zero_init_refusal_of_a_dense_block_names_grow_dense_and_its_advice_works():
    """It said "block 'features.denseblock4' is branches with no shortcut ...; use init='identity'"."""
    from third_party_forms import DenseNetish

    gm = graphmorph.capture(DenseNetish(), torch.randn(2, 3, 32, 32))
    with pytest.raises(graphmorph.RewriteError, match=r"block 'block1' is a dense block: .*"
                                                      r"transforms.grow_dense\(gm, 'block1'\)") as refused:
        transforms.apply(gm, transforms.Grow(after="block1", stage=0, init="zero", std=1.0, seed=0))
    assert "init='identity'" not in str(refused.value)
    grown = transforms.grow_dense(gm, "block1")    # the advice, verified as a morphism by the rewrite itself
    assert parameter_count(grown) > parameter_count(gm)


# --------------------------------------------------------------------------- branch and dense blocks


class _Conv(torch.nn.Sequential):
    def __init__(self, cin, cout, kernel=1):
        super().__init__(torch.nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         torch.nn.BatchNorm2d(cout), torch.nn.ReLU())


class _Inception(torch.nn.Module):
    """GoogLeNet's module in small: parallel branches joined by a concatenation, no shortcut."""

    BRANCHES = 3

    def __init__(self, cin, width):
        super().__init__()
        self.b1 = _Conv(cin, width)
        self.b2 = torch.nn.Sequential(_Conv(cin, width), _Conv(width, width, 3))
        self.b3 = torch.nn.Sequential(torch.nn.MaxPool2d(3, 1, 1), _Conv(cin, width))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)


class _Fire(torch.nn.Module):
    """SqueezeNet's fire module: squeeze, then two expanding convolutions concatenated."""

    BRANCHES = 2

    def __init__(self, cin, width):
        super().__init__()
        self.squeeze, self.e1, self.e3 = (torch.nn.Conv2d(cin, 2, 1), torch.nn.Conv2d(2, width, 1),
                                          torch.nn.Conv2d(2, width, 3, padding=1))

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)


def _branch_net(module):
    torch.manual_seed(0)
    width = 3 * 2 * module.BRANCHES     # as many channels out as in
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), module(4, 6), module(width, 6),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 3))


@pytest.mark.parametrize("module", [_Inception, _Fire], ids=["inception", "fire"])
def test_a_branch_block_grows_as_a_silenced_copy_inside_a_new_shortcut(module):
    x = torch.randn(3, 3, 8, 8)
    gm = graphmorph.capture(randomize_state(_branch_net(module)), x[:2])
    assert graphmorph.find_stages(gm)[0].block_info[-1].kind == "branches"
    grown = transforms.grow(gm, stage=0, init="zero")
    record = history(grown)[-1]
    assert record["shortcut"] is True and record["init"] == "zero"
    new = next(b for b in graphmorph.find_blocks(grown) if b.name == record["new_block"])
    assert new.kind == "residual" and new.shortcut == "identity"
    assert_preserves_function(gm, grown, x, ("eval", "train"))
    again = transforms.replay(graphmorph.capture(randomize_state(_branch_net(module)), x[:2]), [record])
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), grown.state_dict().values()))
    derived = transforms.grow(gm, after="1", init="zero")        # a copy of the block that widens 4 channels
    readers = [m.in_channels for m in derived.modules() if isinstance(m, torch.nn.Conv2d)]
    assert readers.count(4) == [m.in_channels for m in gm.modules() if isinstance(m, torch.nn.Conv2d)].count(4)
    assert_preserves_function(gm, derived, x, ("eval", "train"))


def test_a_branch_block_whose_branch_passes_its_input_on_is_refused_with_the_reason():
    from pruning_zoo import PRUNING_ZOO
    factory, size = PRUNING_ZOO["SplitNet"]
    gm = graphmorph.capture(factory(), torch.randn(2, 3, size, size))
    stage = next(s for s in graphmorph.find_stages(gm) if s.block_info[-1].kind == "branches")
    with pytest.raises(graphmorph.RewriteError, match="passes the block's input on"):
        transforms.grow(gm, stage=stage.index, init="zero")


def test_grow_on_a_dense_block_adds_a_layer_by_grow_dense():
    from third_party_forms import DenseNetish
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = graphmorph.capture(randomize_state(DenseNetish().double()), x)
    assert graphmorph.find_stages(gm)[0].block_info[-1].name == "block1"      # torchvision's form: "branches"
    grown = transforms.grow(gm, stage=0, init="zero")
    assert history(grown)[-1]["rewrite"] == "grow_dense"
    assert_preserves_function(gm, grown, x, ("eval", "train"))

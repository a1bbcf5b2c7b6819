"""AdamInit (paper section 2.2) on real data: only the new block's last BN learns."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import graphmorph
import transforms
from graphmorph.graph.history import history
from graphmorph.models import build

LOSS_TOLERANCE = 0.1  # nats: "the training loss is similar after AdamInit"
BATCH = 32


def digits(n=1792):
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target[:n])


def trained_shallow_net(x, y, epochs=4):
    torch.manual_seed(0)
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", in_channels=1, widths=(8, 8, 8)), x[:2])
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    gm.train()
    for _ in range(epochs):
        for xb, yb in batches_of(x, y):
            optimizer.zero_grad()
            F.cross_entropy(gm(xb), yb).backward()
            optimizer.step()
    return gm


def test_adam_init_trains_only_the_new_last_bn_towards_the_shallow_loss():
    x, y = digits()
    batches = batches_of(x, y)
    gm = trained_shallow_net(x, y)
    before = {k: v.clone() for k, v in gm.state_dict().items()}

    seed = torch.Generator().manual_seed(3)
    start = transforms.grow(gm, stage=0, init="adam", data=batches, generator=copy_of(seed),
                            adam_options=transforms.AdamInitOptions(max_epochs=0))
    options = transforms.AdamInitOptions(lr=1e-2)   # the paper's 1e-3 needs 6 to 10+ epochs on this tiny net
    grown = transforms.grow(gm, stage=0, init="adam", data=lambda: iter(batches), generator=copy_of(seed),
                            adam_options=options)
    report = history(grown)[-1]["adam"]

    state, start_state = grown.state_dict(), start.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in before.items())        # old params and BN stats
    assert all(torch.equal(v, before[k]) for k, v in gm.state_dict().items())
    learned = {"layer1.1.bn2.weight", "layer1.1.bn2.bias"}
    assert 1 <= report["epochs"] < options.max_epochs and report["kept_epoch"] == report["epochs"]
    assert all(not torch.equal(state[k], start_state[k]) for k in learned)
    assert all(torch.equal(v, start_state[k]) for k, v in state.items() if k not in learned)  # only bn2 learned

    assert report["deep_accuracy"] >= report["shallow_accuracy"] - options.tolerance   # the stopping rule held
    assert abs(report["deep_accuracy"] - accuracy_of(grown, x, y)) < 1e-9
    assert loss_of(grown, x, y) <= loss_of(gm, x, y) + LOSS_TOLERANCE


def test_adam_init_first_sets_the_new_blocks_bn_statistics_to_the_training_datas():
    x, y = digits(256)
    batches = batches_of(x, y)
    gm = trained_shallow_net(x, y, epochs=1)
    grown = transforms.grow(gm, stage=0, init="adam", data=batches, generator=torch.Generator().manual_seed(1),
                            adam_options=transforms.AdamInitOptions(max_epochs=0))
    for name in ("layer1.1.bn1", "layer1.1.bn2"):      # the oracle: each batch's statistics, averaged by hand
        norm = grown.get_submodule(name)
        inputs = []
        handle = norm.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
        grown.eval()
        with torch.no_grad():
            for xb, _ in batches:
                grown(xb)
        handle.remove()
        means = torch.stack([batch.mean((0, 2, 3)) for batch in inputs])
        variances = torch.stack([batch.var((0, 2, 3), unbiased=True) for batch in inputs])
        torch.testing.assert_close(norm.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
        assert norm.momentum == torch.nn.BatchNorm2d(1).momentum and int(norm.num_batches_tracked) == len(batches)


def test_adam_init_keeps_its_most_accurate_epoch_so_it_never_leaves_the_net_worse():
    x, y = digits(256)
    batches = batches_of(x, y)
    gm = trained_shallow_net(x, y, epochs=1)
    seed = torch.Generator().manual_seed(3)

    def grown_after(max_epochs):    # lr far too high: accuracy jumps around from epoch to epoch
        options = transforms.AdamInitOptions(lr=0.5, max_epochs=max_epochs, tolerance=-100.0)
        net = transforms.grow(gm, stage=0, init="adam", data=batches, generator=copy_of(seed), adam_options=options)
        return net, history(net)[-1]["adam"]

    runs = [grown_after(max_epochs) for max_epochs in range(5)]
    reports = [report for _, report in runs]
    assert [report["epochs"] for report in reports] == list(range(5))
    assert any(report["kept_epoch"] < report["epochs"] for report in reports)   # some epoch made it worse
    for net, report in runs:
        assert abs(report["deep_accuracy"] - accuracy_of(net, x, y)) < 1e-9
        kept_net, _ = runs[report["kept_epoch"]]          # the same state as a run stopped at the kept epoch
        assert all(torch.equal(v, kept_net.state_dict()[k]) for k, v in net.state_dict().items())
    accuracies = [report["deep_accuracy"] for report in reports]
    assert accuracies == sorted(accuracies)               # more epochs never leave a less accurate net


def batches_of(x, y):
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]


def loss_of(model, x, y):
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def accuracy_of(model, x, y):
    model.eval()
    with torch.no_grad():
        return 100.0 * int((model(x).argmax(1) == y).sum()) / len(y)


def copy_of(generator):
    return torch.Generator().set_state(generator.get_state())

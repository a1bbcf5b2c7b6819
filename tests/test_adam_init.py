"""AdamInit (paper section 2.2) on real data: only the new block's last BN learns."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import graphmorph
import transforms
from graphmorph.graph.history import history
from graphmorph.models import build

LOSS_TOLERANCE = 0.1  # nats: "the training loss is similar after AdamInit"


def digits(n=256):
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target[:n])


def loss_of(model, x, y):
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_adam_init_trains_only_the_new_last_bn_towards_the_shallow_loss():
    torch.manual_seed(0)
    x, y = digits()
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", in_channels=1, widths=(8, 8, 8)), x[:2])
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    gm.train()
    for _ in range(4):
        for xb, yb in batches:
            optimizer.zero_grad()
            F.cross_entropy(gm(xb), yb).backward()
            optimizer.step()
    before = {k: v.clone() for k, v in gm.state_dict().items()}

    seed = torch.Generator().manual_seed(3)
    start = transforms.grow(gm, stage=0, init="adam", data=batches, generator=copy_of(seed),
                            adam_options=transforms.AdamInitOptions(max_epochs=0))
    grown = transforms.grow(gm, stage=0, init="adam", data=lambda: iter(batches), generator=copy_of(seed))
    report = history(grown)[-1]["adam"]  # the paper's settings: Adam 1e-3, wd 5e-4, <= 10 epochs

    state = grown.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in before.items())        # old params and BN stats
    assert all(torch.equal(v, before[k]) for k, v in gm.state_dict().items())
    bn, bn_start = grown.get_submodule("layer1.1.bn2"), start.get_submodule("layer1.1.bn2")
    assert 1 <= report["epochs"] <= 10 and not torch.equal(bn.weight, bn_start.weight)
    others = [k for k in state if k.startswith("layer1.1.") and "bn2" not in k and "running" not in k
              and "num_batches" not in k]
    assert others and all(torch.equal(state[k], start.state_dict()[k]) for k in others)  # only bn2 learned

    assert report["deep_accuracy"] >= report["shallow_accuracy"] - 0.5       # the stopping rule held
    assert abs(report["deep_accuracy"] - accuracy_of(grown, x, y)) < 1e-9
    assert loss_of(grown, x, y) <= loss_of(gm, x, y) + LOSS_TOLERANCE


def accuracy_of(model, x, y):
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def copy_of(generator):
    return torch.Generator().set_state(generator.get_state())

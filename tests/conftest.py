"""Hypothesis profiles: `dev` (default), `ci` (same budget, derandomised so CI is repeatable) and
`deep` for long runs: HYPOTHESIS_PROFILE=deep pytest."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def refused(capsys):
    """Run the command line in-process: `refused(argv)` is (exit code, stderr), stderr one line."""
    from graphmorph.cli import main

    def run(argv):
        code = main(argv)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return code, err

    return run

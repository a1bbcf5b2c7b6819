"""AutoGrow's policies as pure units (paper section 2.3), on hand-made accuracy histories."""
import pytest

from graphmorph.search.policies import (
    improvement, meets_growing_policy, meets_stopping_policy, next_stage, running_max,
)


def test_the_metric_is_the_running_maximum_of_validation_accuracy():
    assert running_max([50, 70, 60, 80, 75]) == [50, 70, 70, 80, 80]
    assert running_max([]) == []


def test_improvement_over_a_window_counts_from_zero_before_training():
    metric = [50, 70, 70, 80, 80]
    assert improvement(metric, 1) == 0
    assert improvement(metric, 2) == 10
    assert improvement(metric, 5) == 80       # the window reaches back before the first epoch
    assert improvement([], 3) == 0


def test_periodic_growth_always_grows():
    assert meets_growing_policy("periodic", [90.0, 90.0, 90.0], K=3, tau=0.05)


@pytest.mark.parametrize("metric, grows", [
    ([90.0, 90.02, 90.04, 90.04], True),     # +0.04 over the last 3 epochs < tau: converged, grow
    ([90.0, 90.02, 90.04, 90.06], False),    # +0.06 over the last 3 epochs: not converged
    ([90.0, 91.0, 92.0, 93.0], False),       # still improving
    ([90.0, 90.0], False),                   # fewer than K epochs since the start
])
def test_convergent_growth_waits_for_convergence(metric, grows):
    assert meets_growing_policy("convergent", metric, K=3, tau=0.05) is grows


@pytest.mark.parametrize("metric, grown, stops", [
    ([80, 85, 85.01, 85.03, 85.04], 1, True),     # +0.04 over the last J=3 epochs: the growth did not pay
    ([80, 85, 85.01, 85.03, 85.06], 1, False),    # +0.06: keep growing that stage
    ([80, 85, 85.01, 85.03, 85.04], None, False),  # nothing grown yet, nothing to stop
    ([85.0, 85.0], 1, False),             # fewer than J epochs of evidence
])
def test_stopping_policy(metric, grown, stops):
    assert meets_stopping_policy(metric, window=3, tau=0.05, grown=grown) is stops


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="periodic, convergent"):
        meets_growing_policy("eager", [1.0], 3, 0.05)


def test_round_robin_over_the_circular_list_and_after_removal():
    growing = [0, 1, 2, 3]
    assert [next_stage(growing, s) for s in growing] == [1, 2, 3, 0]
    growing.remove(2)
    assert next_stage(growing, 1) == 3 and next_stage(growing, 3) == 0

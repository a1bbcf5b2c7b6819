"""The thread policy (`--threads N|auto`): auto keeps the count that measures faster, falls back to one
thread when the machine gets busy, holds the count for the job only; runs record it, resume keep it,
and the same seed and threads give the same run."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import graphmorph.run.threads as threads_module
from graphmorph.run.threads import AUTO, TOLERANCE, ThreadPolicy, compare_threads, threads_check
from graphmorph.search.autogrow import AutoGrowConfig, run

NET = torch.nn.Linear(4, 2)


class Machine:
    """A fake training step whose seconds depend on the thread count in force: `seconds[n]` at n
    threads; counts the steps timed at each count."""

    def __init__(self, seconds: dict[int, float]):
        self.seconds, self.steps = dict(seconds), {n: 0 for n in seconds}

    def __call__(self) -> float:
        n = torch.get_num_threads()
        self.steps[n] += 1
        return self.seconds[n]


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("one, two, chosen", [
    (0.030, 0.100, 1),             # a busy machine: two threads wait on a parked one
    (0.030, 0.020, 2),             # an idle machine where the second core pays
    (0.030, 0.030 * TOLERANCE, 2),          # alike within the tolerance: every core, PyTorch's default
    (0.030, 0.030 * TOLERANCE * 1.01, 1),   # slower: one thread
])
def test_auto_keeps_the_count_that_measures_faster(two_cores, one, two, chosen):
    said = []
    policy = ThreadPolicy(AUTO, say=said.append)
    with policy.held():
        assert torch.get_num_threads() == 1   # undecided: one thread while data loads
        policy.settle(Machine({1: one, 2: two}))
        assert policy.threads == chosen == torch.get_num_threads()
    assert policy.step_ms == {1: round(one * 1e3, 3), 2: round(two * 1e3, 3)}
    assert said == [f"threads: {chosen} ({policy.reason})"]
    assert f"{one * 1e3:.1f} ms on 1 thread and {two * 1e3:.1f} ms on 2" in policy.reason


def test_the_comparison_alternates_and_stops_timing_a_count_that_lost(two_cores):
    machine = Machine({1: 0.01, 2: 0.5})
    measured = compare_threads(machine, (1, 2))
    assert measured == {1: 0.01, 2: 0.5}
    turn = 1 + threads_module.TIMED           # a step that wakes the pool, then the timed ones
    assert machine.steps == {1: turn, 2: turn}   # one round: two threads lost by 50x
    slow = Machine({1: 0.01, 2: 0.012})
    compare_threads(slow, (1, 2))
    assert slow.steps == {1: turn * threads_module.ROUNDS, 2: turn * threads_module.ROUNDS}
    assert torch.get_num_threads() == 1


def test_a_busy_machine_mid_run_sends_auto_back_to_one_thread_and_records_why(two_cores):
    said = []
    policy = ThreadPolicy(AUTO, say=said.append)
    idle, busy = Machine({1: 0.03, 2: 0.02}), Machine({1: 0.03, 2: 0.09})
    with policy.held():
        policy.settle(idle)
        policy.watch(NET, 0.021, lambda: idle)     # the pace it measured: nothing to do
        policy.watch(NET, 0.025, lambda: idle)
        assert policy.threads == 2 and idle.steps[1] == (1 + threads_module.TIMED) * threads_module.ROUNDS
        policy.watch(NET, 0.09, lambda: busy)      # another process took a core
        assert policy.threads == 1 == torch.get_num_threads()
    assert [(s["from"], s["to"]) for s in policy.switches] == [(2, 1)]
    assert "30.0 ms on 1 thread, 90.0 ms on 2" in policy.switches[0]["reason"] and said[-1].startswith("threads: 2 -> 1")
    restored = ThreadPolicy.restored(policy.record(), AUTO)
    assert (restored.threads, restored.switches, restored.requested) == (1, policy.switches, AUTO)


def test_a_grown_net_or_a_slower_pass_that_two_threads_still_win_keeps_them(two_cores):
    policy = ThreadPolicy(AUTO, say=lambda _: None)
    with policy.held():
        policy.settle(Machine({1: 0.03, 2: 0.02}))
        policy.watch(NET, 0.02, lambda: pytest.fail("the first pass sets the pace"))
        grown = torch.nn.Linear(40, 20)    # 82x the parameters: its slower pace is expected
        policy.watch(grown, 0.5, lambda: pytest.fail("a net that grew is not measured again"))
        still = Machine({1: 0.6, 2: 0.4})
        policy.watch(grown, 1.5, lambda: still)   # 3x its pace: measured again, two threads still win
        assert policy.threads == 2 == torch.get_num_threads() and not policy.switches and still.steps[2] > 1


def test_a_count_given_is_kept_and_the_process_setting_restored_after(two_cores):
    torch.set_num_threads(2)
    policy = ThreadPolicy(1, say=lambda _: None)
    with policy.held():
        assert torch.get_num_threads() == 1
        policy.watch(NET, 100.0, lambda: pytest.fail("a count given is never measured"))
    assert torch.get_num_threads() == 2 and policy.reason == "1 as asked"
    assert "oversubscribes" in ThreadPolicy(3).reason


@pytest.mark.parametrize("value, ok", [(AUTO, True), (1, True), (8, True), (0, False), (True, False), ("2", False)])
def test_threads_settings_are_checked(value, ok):
    assert threads_check(value)[0] is ok


@pytest.mark.parametrize("argv, message", [
    (["autogrow", "--threads", "0"], "expected a positive number of threads or auto, got '0'"),
    (["prune", "--threads", "many"], "expected a positive number of threads or auto, got 'many'"),
    (["autogrow", "--resume", "somewhere", "--threads", "1"], "--resume continues with the run's saved settings; "
                                                              "drop --threads"),
])
def test_bad_threads_are_one_line_and_exit_2(refused, argv, message, capsys):
    try:
        code, err = refused(argv)
    except SystemExit as stop:   # argparse's own exit
        code, err = stop.code, capsys.readouterr().err
    assert code == 2 and message in err


TINY = {"seed_net": "Basic3ResNet", "widths": (2, 2, 2), "K": 1, "J": 1, "tau": 0.5, "finetune_epochs": 1,
        "batch_size": 64, "fraction": 0.2, "max_growth_epochs": 2, "device": "cpu", "test_every": 0}


def test_a_resume_keeps_the_recorded_threads_and_auto_records_what_it_measured(tmp_path):
    lines = []

    def stop_after_epoch_2(line):
        lines.append(line)
        if line.startswith("epoch    2"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(AutoGrowConfig.from_dict({**TINY, "threads": 2}), tmp_path / "run", progress=stop_after_epoch_2)
    torch.set_num_threads(1)
    try:
        resumed = []
        run(None, tmp_path / "run", resume=True, progress=resumed.append)
        assert torch.get_num_threads() == 1    # the job's count held for the job only
    finally:
        torch.set_num_threads(2)
    assert resumed[0].endswith("on 2 thread(s)")
    assert {row["threads"] for row in json.loads((tmp_path / "run" / "log.json").read_text())} == {2}

    run(AutoGrowConfig.from_dict({**TINY, "threads": AUTO}), tmp_path / "auto", progress=lambda _: None)
    record = json.loads((tmp_path / "auto" / "config.json").read_text())["reproduce"]
    choice = record["thread_choice"]
    cores = threads_module._cores_per_process()
    assert choice["requested"] == AUTO and record["threads"] == choice["threads"] in (1, cores)
    assert cores == 1 or set(choice["step_ms"]) == {"1", str(cores)}
    assert record["rerun_with"] == f"--seed 0 --threads {record['threads']}"
    assert record["versions"]["torch"] == torch.__version__ and record["device"].startswith("cpu")


def _untimed(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _graphmorph(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "graphmorph", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_the_default_autogrow_twice_with_the_same_seed_and_threads_finds_the_same_net_and_log(tmp_path):
    """Two processes side by side, one thread each (on two cores each runs as it would alone); the
    second is killed mid-way (a crash: no chance to clean up) and resumed, keeping its thread count.
    Both must compute the same: log, history, result and weights."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    first, victim = (_graphmorph("autogrow", "--threads", "1", "--run-dir", str(where)) for where in (whole, killed))
    log = killed / "log.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and len(json.loads(log.read_text())) >= 5):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = len(json.loads(log.read_text()))
    resumed = _graphmorph("autogrow", "--resume", str(killed)).communicate(timeout=900)[0]   # while first runs
    printed = first.communicate(timeout=900)[0]
    assert first.returncode == 0, printed
    assert "threads: 1 (1 as asked)" in printed.splitlines()[:4]
    assert f"resuming {killed} after epoch {done_before} on 1 thread(s)" in resumed, resumed
    logs = [json.loads((where / "log.json").read_text()) for where in (whole, killed)]
    assert 5 <= done_before < len(logs[0]), "the run must be killed mid-way"
    assert _untimed(logs[0]) == _untimed(logs[1]) and {row["threads"] for row in logs[1]} == {1}
    results = [json.loads((where / "result.json").read_text()) for where in (whole, killed)]
    assert results[0]["found"] == results[1]["found"] and results[0]["test_acc"] == results[1]["test_acc"]
    assert (whole / "rewrites.json").read_text() == (killed / "rewrites.json").read_text()
    weights = [torch.load(where / "checkpoint.pt", weights_only=True)["model"] for where in (whole, killed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[1])
    config = json.loads((whole / "config.json").read_text())
    assert config["threads"] == 1 and config["reproduce"]["seed"] == 0 and config["reproduce"]["threads"] == 1

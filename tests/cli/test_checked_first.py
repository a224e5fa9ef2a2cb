"""What the command line refuses, it refuses before any work: no capture, no simulation,
no run whose result is then thrown away (issue 27 item 9)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from devpool.cli import capture as _capture
from devpool.cli import replay as _replay
from tests.cli.test_commands import assert_one_line, cli
from tests.pages import make_pages


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if pages are captured or a replay starts; yields the calls seen."""
    calls = []

    def refuse(name):
        def called(*args, **kw):
            calls.append(name)
            raise AssertionError(f"{name} ran before the refusal")
        return called

    monkeypatch.setattr(_capture, "capture_pid", refuse("capture_pid"))
    monkeypatch.setattr(_capture, "capture_workloads", refuse("capture_workloads"))
    monkeypatch.setattr(_replay, "run_replay", refuse("run_replay"))
    yield calls
    assert calls == []


@pytest.fixture
def pages_file(tmp_path):
    path = tmp_path / "pages.npy"
    np.save(path, make_pages(16, np.random.default_rng(1)))
    return path


@pytest.mark.parametrize("argv", [
    ["capture", "-o", "", "--pid", str(os.getpid()), "--quiet"],
    ["capture", "-o", "", "--quiet"],
    ["replay", "--json", "", "--pid", str(os.getpid()), "--quiet"],
    ["bench", "--json", "", "--pid", str(os.getpid()), "--quiet"],
    ["bench", "--plot", "", "--pid", str(os.getpid()), "--quiet"],
    ["replay", "--plot", "", "--pid", str(os.getpid()), "--quiet"],
])
def test_an_empty_output_path_is_refused_before_capturing(capsys, no_work, argv):
    rc, out, err = cli(capsys, *argv)
    assert_one_line(rc, out, err, "empty")


@pytest.mark.parametrize("shape", [(2, 3), (4, 1), (1, 4), ()])
def test_a_trace_that_is_not_one_dimensional_is_refused(capsys, tmp_path, pages_file, shape):
    trace = tmp_path / "trace.npy"
    np.save(trace, np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape))
    rc, out, err = cli(capsys, "replay", "--pages", str(pages_file), "--quiet", "--pattern", str(trace))
    assert_one_line(rc, out, err, "trace.npy", "1-D", str(shape))


def test_a_real_replay_the_region_would_refuse_is_refused_before_the_simulation(capsys, no_work, backend):
    """The simulation's pools have small segments; the real region's have the pool's
    default (64 pages): a 4-page limit ran the whole simulation, then the region
    refused it. Now nothing runs."""
    rc, out, err = cli(capsys, "replay", "--real", "--backend", backend, "--pool-limit-pages", "4",
                       "--pid", str(os.getpid()), "--quiet", "--working-set", "64", "--ram-pages", "16")
    assert_one_line(rc, out, err, "--real", "--pool-limit-pages 64")


@pytest.mark.parametrize("flag, value, words", [
    ("--backend", "bogus", ["unknown backend", "bogus"]),
    ("--compressor", "bogus", ["unknown codec", "bogus"]),
    ("--pattern", "spiral", ["spiral"]),
])
def test_a_replay_that_cannot_run_is_refused_before_capturing(capsys, no_work, flag, value, words):
    rc, out, err = cli(capsys, "replay", flag, value, "--pid", str(os.getpid()), "--quiet")
    assert_one_line(rc, out, err, *words)


def test_a_refused_real_limit_is_the_only_refusal(capsys, pages_file, tmp_path):
    """The check itself refuses nothing else: the same run without --real goes through
    (the simulation takes 4-page limits)."""
    rc, out, err = cli(capsys, "replay", "--backend", "host", "--pool-limit-pages", "4", "--pages",
                       str(pages_file), "--quiet", "--working-set", "64", "--ram-pages", "16",
                       "--accesses", "300", "--compressor", "lz4")
    assert rc == 0, err
    assert "zswap limit 4 pages" in out

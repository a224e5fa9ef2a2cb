"""Bounded fuzzers for what a user hands the command line and ``open_pool``.

Each input either works or is refused with a devpool error (one line on the command
line); never another exception, never an allocation sized by a forged header.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import devpool
from devpool.cli.main import build_parser
from devpool.cli.io import load_pages_file
from devpool.cli.replay import MAX_ACCESSES, MAX_WORKING_SET, load_trace

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _header(shape, descr: str, fortran: bool) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


npy_files = st.one_of(
    st.binary(max_size=300),                                          # anything at all
    st.builds(lambda shape, descr, fortran, body: _header(shape, descr, fortran) + body,
              st.tuples(st.integers(0, 2**40), st.sampled_from([4096, 4095, 0, 2**40]))
              | st.tuples(st.integers(0, 2**62))
              | st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
              st.sampled_from(["|u1", "<i8", "<f4", "|b1", "<u8", "|O"]),
              st.booleans(),
              st.binary(max_size=3 * 4096)),
)


@FUZZ
@given(data=npy_files, max_pages=st.none() | st.integers(1, 5))
def test_pages_files_load_or_are_refused(data, max_pages):
    path = _write(data, ".npy")
    try:
        pages = load_pages_file(path, max_pages)
    except devpool.BadInputError:
        return
    finally:
        os.unlink(path)
    assert pages.dtype == np.uint8 and pages.ndim == 2 and pages.shape[1] == 4096
    assert 1 <= pages.shape[0] <= len(data) // 4096 and pages.flags.c_contiguous


trace_texts = st.lists(st.one_of(st.integers(-5, 2**70).map(str), st.sampled_from(["1e3", "x", "", "0x10", "nan"])),
                       max_size=20).map(" ".join)


def _check_trace(data: bytes, suffix: str) -> None:
    path = _write(data, suffix)
    try:
        trace = load_trace(path)
    except devpool.BadInputError:
        return
    finally:
        os.unlink(path)
    assert trace.dtype == np.int64 and 1 <= trace.size <= MAX_ACCESSES
    assert trace.min() >= 0 and trace.max() < MAX_WORKING_SET


@FUZZ
@given(text=trace_texts)
def test_text_traces_load_or_are_refused(text):
    _check_trace(text.encode(), ".txt")


@FUZZ
@given(data=npy_files)
def test_npy_traces_load_or_are_refused(data):
    _check_trace(data, ".npy")


numbers = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(["", "abc", "1e10", "0", "-0", " 7", "1_0", "1,2", ",", "16,abc"]))


@FUZZ
@given(where=st.sampled_from(
           [("bench", o) for o in ("--batch", "--sweep", "--max-pages", "--pid")]
           + [("capture", o) for o in ("--max-pages", "--pid")]
           + [("replay", o) for o in ("--working-set", "--ram-pages", "--accesses", "--pool-limit-pages", "--seed",
                                      "--incompressible", "--max-pages", "--pid")]),
       value=numbers)
def test_the_parser_takes_a_value_in_range_or_says_one_line(capsys, where, value):
    command, option = where
    argv = [command, option, value] + (["-o", "x.npy"] if command == "capture" else [])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"devpool {command}: error: argument {option}"), err
        return
    got = getattr(args, option[2:].replace("-", "_"))
    if option == "--sweep":
        assert got and all(isinstance(b, int) and b >= 1 for b in got)
    elif option == "--incompressible":
        assert 0 <= got <= 1
    elif option == "--seed":
        assert isinstance(got, int) and got >= 0
    else:
        assert isinstance(got, int) and got >= 1
        if option in ("--working-set", "--ram-pages", "--pool-limit-pages"):
            assert got <= MAX_WORKING_SET
        if option == "--accesses":
            assert got <= MAX_ACCESSES


hostile = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.text(max_size=3), st.just(np.int64(1 << 16)), st.just([4096]))


@FUZZ
@given(option=st.sampled_from(["capacity_bytes", "segment_bytes", "max_object_bytes", "seed", "move_fraction",
                               "unknown"]),
       value=hostile, name=st.sampled_from(["host", "chaos"]))
def test_open_pool_works_or_refuses_cleanly(option, value, name):
    kw = {"capacity_bytes": 1 << 20, option: value}
    try:
        pool = devpool.open_pool(name, **kw)
    except devpool.DevpoolError:
        return
    with pool:                                         # what was accepted works
        data = np.arange(min(100, pool.max_object_bytes), dtype=np.uint8)
        h = pool.alloc(data.size)
        pool.write(h, data)
        assert np.array_equal(pool.read(h), data)


@pytest.mark.parametrize("name", ["host", "chaos"])
@pytest.mark.parametrize("kw", [{"segment_bytes": "x"}, {"segment_bytes": 1.5}, {"capacity_bytes": True},
                                {"max_object_bytes": "4096"}, {"bogus": 1}, {"seed": "x"}, {"seed": -1},
                                {"migrate_per_object": float("nan")}, {"migrate_per_object": -1}])
def test_open_pool_bad_arguments_are_bad_input(name, kw):
    """(host takes no chaos options: an unknown keyword there, refused as well)"""
    with pytest.raises(devpool.BadInputError):
        devpool.open_pool(name, **{"capacity_bytes": 1 << 20, **kw})

"""devpool imports where its install is read-only and the user has no home."""

import os
import stat

from devpool import _numba_setup


def _no_cache_dir(monkeypatch):
    """Unset NUMBA_CACHE_DIR for one test, and have it unset again afterwards.

    ``monkeypatch.delenv`` of a variable that is not set records nothing to undo, so the
    directory ensure_cache_dir then exports (a root-owned tmp_path) outlived the test and
    every later subprocess inherited it: a `devpool status` run as nobody found no
    cache it could write and died importing devpool (seen in CI only, by test order).
    Setting it first makes monkeypatch remember that it was absent."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", "unset-after-the-test")
    monkeypatch.delenv("NUMBA_CACHE_DIR")


def test_unwritable_install_and_home_get_a_private_cache_dir(monkeypatch, tmp_path):
    _no_cache_dir(monkeypatch)
    monkeypatch.setattr(_numba_setup, "_writable", lambda path: False)
    monkeypatch.setattr(_numba_setup.tempfile, "gettempdir", lambda: str(tmp_path))
    from numba.core import config
    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)     # restored afterwards
    _numba_setup.ensure_cache_dir()
    path = os.environ["NUMBA_CACHE_DIR"]
    assert path.startswith(str(tmp_path)) and os.path.isdir(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert config.CACHE_DIR == path


def test_an_explicit_cache_dir_wins(monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/else")
    monkeypatch.setattr(_numba_setup, "_writable", lambda path: False)
    _numba_setup.ensure_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == "/somewhere/else"


# --- the fallback directory is ours alone, or not used ------------------------------------
def _fallback(monkeypatch, tmp_path):
    """Run ensure_cache_dir with install and home unwritable and the temp dir in tmp_path."""
    import warnings

    _no_cache_dir(monkeypatch)
    monkeypatch.setattr(_numba_setup, "_writable", lambda path: False)
    monkeypatch.setattr(_numba_setup.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(_numba_setup.atexit, "register", lambda *a, **k: None)   # tmp_path cleans up
    from numba.core import config
    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _numba_setup.ensure_cache_dir()
    return os.environ["NUMBA_CACHE_DIR"], [str(w.message) for w in caught]


def _shared_path(tmp_path):
    return tmp_path / f"devpool-numba-cache-{os.geteuid()}"


def test_an_existing_private_dir_of_ours_is_reused(monkeypatch, tmp_path):
    _shared_path(tmp_path).mkdir(mode=0o700)
    path, warned = _fallback(monkeypatch, tmp_path)
    assert path == str(_shared_path(tmp_path)) and not warned


def _assert_refused(monkeypatch, tmp_path, why):
    path, warned = _fallback(monkeypatch, tmp_path)
    assert path != str(_shared_path(tmp_path))
    assert len(warned) == 1 and str(_shared_path(tmp_path)) in warned[0] and why in warned[0], warned
    st = os.lstat(path)                     # the fallback: a fresh directory of ours, 0700
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_a_dir_planted_by_another_user_is_refused(monkeypatch, tmp_path):
    if os.geteuid() != 0:
        import pytest
        pytest.skip("giving a directory to another uid needs root")
    d = _shared_path(tmp_path)
    d.mkdir()
    os.chmod(d, 0o777)
    os.chown(d, 12345, 12345)
    (d / "planted.nbi").write_bytes(b"a pickle that runs code")
    _assert_refused(monkeypatch, tmp_path, "uid 12345")


def test_a_dir_of_ours_that_others_may_write_is_refused(monkeypatch, tmp_path):
    d = _shared_path(tmp_path)
    d.mkdir()
    os.chmod(d, 0o777)
    _assert_refused(monkeypatch, tmp_path, "may write")


def test_a_symlink_in_its_place_is_refused(monkeypatch, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    _shared_path(tmp_path).symlink_to(target)
    _assert_refused(monkeypatch, tmp_path, "symbolic link")
    assert not list(target.iterdir())


def test_a_file_in_its_place_is_refused(monkeypatch, tmp_path):
    _shared_path(tmp_path).write_bytes(b"")
    _assert_refused(monkeypatch, tmp_path, "not a directory")


def test_a_new_dir_is_created_0700_whatever_the_umask(monkeypatch, tmp_path):
    old = os.umask(0)
    try:
        path, warned = _fallback(monkeypatch, tmp_path)
    finally:
        os.umask(old)
    assert path == str(_shared_path(tmp_path)) and not warned
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


_CALLEE = "import numba\n\n@numba.njit(cache=True)\ndef f():\n    return {}\n"
_CALLER = ("import numba\nfrom .callee import f\n\n@numba.njit(cache=True)\ndef g():\n"
           "    return f() + 10\n")
_RUN = """
import sys
sys.path.insert(0, {parent!r})
import devpool
from devpool import _numba_setup
if {stamped}:
    _numba_setup.stamp_caches_with_package().roots.append({root!r})
from pkg.caller import g
print(g())
"""


def test_a_cached_function_recompiles_when_a_file_it_calls_into_changes(tmp_path):
    """numba keys a cached function to its own file, but its compiled code holds the
    code of what it calls from other files: an edit there left the cache running the
    old code (after an upgrade in place: a segfault, the old allocator's table layout).
    Under the package stamp, an edit to any file of the package recompiles. Shown on a
    package of two files, each process fresh (the caches on disk): without the stamp
    the caller still answers with the old callee."""
    import subprocess
    import sys
    import time

    def run(root, stamped, cache):
        script = _RUN.format(parent=str(root.parent), root=str(root), stamped=stamped)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "NUMBA_CACHE_DIR": str(cache)})
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    for stamped in (False, True):
        root = tmp_path / str(stamped) / "pkg"
        root.mkdir(parents=True)
        (root / "__init__.py").write_text("")
        (root / "caller.py").write_text(_CALLER)
        (root / "callee.py").write_text(_CALLEE.format(1))
        cache = tmp_path / f"cache-{stamped}"
        assert run(root, stamped, cache) == 11                 # compiled, and cached
        time.sleep(0.01)
        (root / "callee.py").write_text(_CALLEE.format(2))     # an edit to the callee only
        assert run(root, stamped, cache) == (12 if stamped else 11)


def test_the_package_stamp_follows_every_source_file_and_nothing_else(tmp_path):
    """Any .py file's content or name, also in a subpackage, changes the stamp; other
    files (numba's own cache files beside them) do not."""
    stamp = _numba_setup.package_stamp.__wrapped__
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    first = stamp(str(tmp_path))
    (tmp_path / "sub" / "g.nbi").write_bytes(b"cache")
    assert stamp(str(tmp_path)) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    second = stamp(str(tmp_path))
    assert second != first
    (tmp_path / "sub" / "b.py").rename(tmp_path / "sub" / "c.py")
    assert stamp(str(tmp_path)) not in (first, second)

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

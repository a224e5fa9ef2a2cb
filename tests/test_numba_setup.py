"""devpool imports where its install is read-only and the user has no home."""

import os
import stat

from devpool import _numba_setup


def test_unwritable_install_and_home_get_a_private_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
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

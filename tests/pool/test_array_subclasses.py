"""An ndarray subclass is the bytes it holds, in every single verb of the pool.

The single verbs hand a plain 1-D uint8 array to a compiled call that was compiled for
exactly that type and skips numba's type checks (:func:`devpool._compiled.entry`): what
reaches it must be a plain 1-D array. ``np.matrix`` stays 2-D through ``reshape(-1)``:
``alloc(data=matrix)`` passed a (1, n) matrix to ``alloc_write_one``, whose unboxing
wrote a second dimension past a 1-D array's struct (a segmentation fault), and ``write``
/ ``read(out=)`` escaped as raw ValueError / NotImplementedError from a memoryview.
"""

from __future__ import annotations

import numpy as np

import devpool


def _data(n=1000):
    return (np.arange(n, dtype=np.uint32) * 2654435761 >> 13).astype(np.uint8)


def test_a_matrix_is_its_bytes_in_alloc_write_and_read(backend):
    data = _data()
    with devpool.open_pool(backend, 1 << 20) as pool:
        h = pool.alloc(data.size, data=np.asmatrix(data))
        assert pool.read(h).tobytes() == data.tobytes()
        pool.write(h, np.asmatrix(data[::-1].copy()))
        assert pool.read(h).tobytes() == data[::-1].tobytes()
        out = np.asmatrix(np.zeros(data.size, np.uint8))
        pool.read(h, out)
        assert out.tobytes() == data[::-1].tobytes()
        assert pool.stats()["obj_used"] == 1


def test_a_one_dimensional_subclass_is_its_bytes_too(backend, tmp_path):
    data = _data()
    mm = np.memmap(tmp_path / "m", np.uint8, "w+", shape=(data.size,))
    mm[:] = data
    with devpool.open_pool(backend, 1 << 20) as pool:
        h = pool.alloc(data.size, data=mm)
        assert pool.read(h).tobytes() == data.tobytes()
        pool.write(h, mm[::-1].copy())
        out = np.memmap(tmp_path / "o", np.uint8, "w+", shape=(data.size,))
        pool.read(h, out)
        assert out.tobytes() == data[::-1].tobytes()
    del mm, out

"""The GPU session's own checks, one per step of ``gpu_session.py`` (each its own process).

    python benchmarks/gpu_checks.py environment       # what the machine has, never fails
    python benchmarks/gpu_checks.py smoke             # the pool round trip on the cuda backend: the gate
    python benchmarks/gpu_checks.py pool-size         # the arena grown to most of the card
    python benchmarks/gpu_checks.py codecs            # lz4-device and nvcomp-lz4 behind Zswap, each on its own
    python benchmarks/gpu_checks.py diagnose          # after a failed smoke: every view of the device, each on its own

Each prints what it found and exits 0 only when everything it checked held. The smoke
checks the pool alone (batch and single-page round trips, compaction): a failure of a
device codec, the likeliest GPU-only break, must not throw the pool's figures away, so
the codecs are a step of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

GiB = 1 << 30


def environment(path: str | None = None) -> int:
    """The machine as the session found it, printed and written to ``path`` as JSON
    (``prerequisites`` says why the region and swap-device steps cannot run, if so)."""
    import platform
    facts = {"python": platform.python_version(), "machine": platform.machine(), "uid": os.geteuid(),
             "NUMBA_ENABLE_CUDASIM": os.environ.get("NUMBA_ENABLE_CUDASIM", "")}
    for mod in ("numpy", "numba", "numba.cuda", "cupy", "lz4", "zstandard", "nvidia.nvcomp", "matplotlib",
                "pytest", "xdist", "pytest_timeout", "cuda.bindings"):
        try:
            m = __import__(mod, fromlist=["_"])
            facts[mod] = getattr(m, "__version__", "present")
        except Exception as exc:                               # noqa: BLE001 - reported
            facts[mod] = f"absent ({type(exc).__name__}: {exc})"
    facts["prerequisites"] = prerequisites()
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,memory.used,driver_version,clocks.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        facts["nvidia-smi"] = (out.stdout or out.stderr).strip()
    import devpool
    facts["backends"] = {k: list(v) for k, v in devpool.available_backends().items()}
    text = json.dumps(facts, indent=1, default=str)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text)
    return 0


def prerequisites() -> dict:
    """Why the region and swap-device benchmarks could not run here (None: they can)."""
    out = {}
    try:
        from devpool.region import uffd
        os.close(uffd.open_uffd())
        out["userfaultfd"] = None
    except Exception as exc:                                   # noqa: BLE001 - the reason is the answer
        out["userfaultfd"] = f"userfaultfd unusable: {type(exc).__name__}: {exc}"
    missing = [what for what, ok in (("root", os.geteuid() == 0), ("/dev/fuse", os.path.exists("/dev/fuse")),
                                     ("/dev/loop-control", os.path.exists("/dev/loop-control"))) if not ok]
    out["swapdev"] = f"needs {', '.join(missing)}" if missing else None
    return out


def smoke() -> int:
    """The pool's round trips on the cuda backend, small: the gate of the session."""
    import devpool
    ok, why = devpool.available_backends()["cuda"]
    print(f"cuda backend: {ok} ({why})")
    rng = np.random.default_rng(0)
    with devpool.open_pool("cuda", 1 << 24) as pool:
        print("storage:", json.dumps(pool.storage.describe()))
        sizes = rng.integers(1, 4097, 500)
        hs = pool.alloc_batch(sizes)
        payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
        pool.write_batch(hs, payload, sizes)
        assert pool.read_batch(hs)[0].tobytes() == payload.tobytes(), "batch round trip"
        h = pool.alloc(4096)
        page = rng.integers(0, 256, 4096, dtype=np.uint8)
        pool.write(h, page)
        assert pool.read(h).tobytes() == page.tobytes(), "single page round trip"
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pool.free_batch(hs[::2])
        pool.compact()
        want = b"".join(payload[s:s + n].tobytes() for s, n in zip(starts[1::2], sizes[1::2]))
        assert pool.read_batch(hs[1::2])[0].tobytes() == want, "after compaction"
        print("SMOKE OK", pool.stats()["device"])
    return 0


def pool_size(fraction: float = 0.75, step: int = GiB) -> int:
    """Commit an arena of ``fraction`` of the device's free memory, ``step`` at a time,
    and say whether it got there (issue 28: growth by reallocation stopped at about
    half the card, the old arena and the new one held at once)."""
    import devpool
    from devpool.kernels._device import CudaStorage
    free, total = device_memory()
    target = int(free * fraction) // step * step
    st = CudaStorage(capacity_bytes=target + step)
    print(f"device memory: {free / GiB:.1f} GiB free of {total / GiB:.1f}; target {target / GiB:.1f} GiB "
          f"in {step >> 20} MiB commits; arena {st.describe().get('arena')}")
    t0, end = time.perf_counter(), 0
    try:
        while end < target:
            st.commit(end, step)
            end += step
    except devpool.PoolFullError as exc:
        print(f"POOL FULL at {end / GiB:.1f} GiB of {target / GiB:.1f}: {exc}")
    dt = time.perf_counter() - t0
    page = np.arange(4096, dtype=np.uint32).view(np.uint8)[:4096]
    if end:
        st.write_one(end - 4096, page)                      # the top of the arena is usable memory
        back = np.empty(4096, np.uint8)
        st.read_one(end - 4096, back)
        assert back.tobytes() == page.tobytes(), "the top page came back different"
    print(f"committed {end / GiB:.1f} GiB in {dt:.2f} s; {json.dumps(st.describe())}")
    st.close()
    return 0 if end >= target else 1


def device_memory() -> tuple[int, int]:
    """(free, total) bytes of the current device; the simulator reports 256 MiB of 512."""
    from devpool.kernels._cuda import simulated
    if simulated():
        return GiB // 4, GiB // 2
    import cupy
    return cupy.cuda.runtime.memGetInfo()


def codecs() -> int:
    """Each device codec through Zswap over a cuda pool, on its own: one failing does
    not hide the other's result."""
    import tempfile

    import devpool
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests.pages import make_pages
    from devpool.kernels._cuda import simulated
    rng = np.random.default_rng(1)
    n = 8 if simulated() else 256                       # the simulator runs a page-thread as Python
    failed = []
    with devpool.open_pool("cuda", 1 << 24) as pool, tempfile.TemporaryDirectory(prefix="devpool-codecs-") as tmp:
        for codec in ("lz4-device", "nvcomp-lz4"):
            if codec == "nvcomp-lz4" and simulated():
                print(f"{codec}: not run (nvCOMP needs a real GPU; the simulator cannot run it)")
                continue
            t = time.perf_counter()
            try:
                zs = devpool.Zswap(pool, codec, max_pool_percent=100, backing=os.path.join(tmp, codec))
                pages = make_pages(n, rng, ("text", "struct", "random", "zero"))
                zs.store_batch(np.arange(n), pages)
                assert (zs.load_batch(np.arange(n)) == pages).all(), "pages came back different"
                zs.close()
                print(f"{codec}: OK in {time.perf_counter() - t:.1f} s (compile or cache load included)")
            except Exception as exc:                           # noqa: BLE001 - each codec on its own
                failed.append(codec)
                print(f"{codec}: FAILED: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


def diagnose() -> int:
    """After a failed smoke: each view of the device on its own (one failing does not
    hide the next); always exits 0, it only reports."""
    def attempt(label, fn):
        print(f"--- {label}")
        try:
            out = fn()
            if out is not None:
                print(out)
        except Exception as exc:                               # noqa: BLE001 - the report is the point
            print(f"FAILED: {type(exc).__name__}: {exc}")

    def smi():
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout

    def numba_detect():
        from numba import cuda
        return cuda.detect()

    def cupy_devices():
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        return f"{n} device(s), runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver " \
               f"{cupy.cuda.runtime.driverGetVersion()}"

    def backends():
        import devpool
        return devpool.available_backends()

    def arena():
        from devpool.kernels._device import CudaStorage
        st = CudaStorage(1 << 26)
        try:
            return st.describe()
        finally:
            st.close()
    for label, fn in (("nvidia-smi", smi), ("numba.cuda.detect()", numba_detect), ("CuPy", cupy_devices),
                      ("devpool.available_backends()", backends), ("a device storage", arena)):
        attempt(label, fn)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    checks = {"environment": environment, "smoke": smoke, "pool-size": pool_size, "codecs": codecs,
              "diagnose": diagnose}
    if not argv or argv[0] not in checks or len(argv) > 2 or (len(argv) == 2 and argv[0] not in ("environment",
                                                                                                  "pool-size")):
        print(f"usage: gpu_checks.py {{{','.join(checks)}}} (environment [F.json], pool-size [STEP_MIB])",
              file=sys.stderr)
        return 2
    if argv[0] == "pool-size" and len(argv) > 1:
        return pool_size(step=int(argv[1]) << 20)
    return checks[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""One GPU lease, not wasted: every question a CUDA machine should answer, in one call.

    bash benchmarks/gpu_session.sh --fetch-wheels   # here, once, before the lease: what the image lacks, into .whl/
    bash benchmarks/gpu_session.sh --dry-run        # here: every step under the simulator, small, limits scaled
    bash benchmarks/gpu_session.sh                  # there: the device tool's run, carry [".whl"], timeout_s 600
    bash benchmarks/gpu_session.sh --only codecs,suite   # a rerun of some steps, in the minutes left

A lease is about 15 minutes in all, one command of at most 10, no internet, at most 8
files back. The image has Python 3.12, numpy, numba, numba-cuda, CuPy, pytest and
matplotlib, but not lz4, zstandard or nvCOMP: ``--fetch-wheels`` downloads those (about
40 MB) into ``.whl/``, and a run without them refuses in its first second, naming what is
missing, instead of failing minutes in.

The steps run in the order the answers matter: the smoke (the pool's round trip on the
device: the gate; if it fails, a diagnosis runs and the session stops, leaving device
time for a rerun), the pool's figures (throughput against raw PCIe, latency, the main
job, a pool grown to most of the card, real page faults, the swap device), the codecs
(each on its own: the likeliest GPU-only break must not take the pool's figures with
it), the GPU's test suite. Each step has its own limit, and the limits add up inside the
budget (checked before anything runs). At its limit a step gets SIGINT first, so pytest
writes its summary and ``--junitxml`` and a benchmark keeps what it measured (they write
their JSON as they go), then SIGKILL. A failed step never stops the later ones.

Every result lands in one archive, ``$OUT/gpu-session-<gpu>-<date>.tar.gz``, re-packed after
every step (a kill at the tool's limit still leaves every finished step), and its
summary beside it: two files. The summary ends with the timing table: each step's limit,
the time it took, and the time it is expected to take on a GPU and why (estimates from
what it does, not measurements). ``--dry-run`` runs the same steps, wheel check and
files here under numba's CUDA simulator at small sizes, limits scaled by ``DRY_SCALE``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# --- what the GPU image lacks ------------------------------------------------------------------
#: (distribution, version) carried as wheels: the image has the rest (KINDS.md's package list)
WHEELS = [("lz4", "4.4.5"), ("zstandard", "0.25.0"),
          ("nvidia-nvcomp-cu13", "6.0.0.12"), ("nvidia-libnvcomp-cu13", "6.0.0.12")]
#: the image's Python (the wheels' ABI) and platform: the device README's recipe
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
FETCH = "bash benchmarks/gpu_session.sh --fetch-wheels"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _fits(tags: str) -> bool:
    """A wheel's ``python-abi-platform`` tags install on CPython 3.12, x86-64 Linux."""
    if tags.count("-") != 2:
        return False
    py, abi, plat = tags.split("-")
    pys, plats = py.split("."), plat.split(".")
    return (any(p in ("cp312", "py3", "py312") for p in pys) and abi in ("cp312", "abi3", "none")
            and any(p in PLATFORMS or p == "any" for p in plats))


def check_wheels(folder: Path) -> list[str]:
    """What is wrong with the carried wheels, one line each (nothing: they will install)."""
    problems = []
    have = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    for name, version in WHEELS:
        found = [w for w in have if _norm(w.name.split("-")[0]) == _norm(name)]
        good = [w for w in found if w.name.split("-")[1:2] == [version] and _fits("-".join(w.stem.split("-")[-3:]))]
        if not good:
            seen = f" (found {', '.join(w.name for w in found)})" if found else ""
            problems.append(f"{name}=={version} for CPython {PYTHON} on x86-64 Linux{seen}")
            continue
        if len(found) > 1:
            problems.append(f"{name}: {len(found)} wheels ({', '.join(w.name for w in found)}); keep one "
                            f"(two versions stop the whole install)")
        try:
            with zipfile.ZipFile(good[0]) as z:
                meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
                text = z.read(meta).decode(errors="replace")
        except (zipfile.BadZipFile, StopIteration, OSError) as exc:
            problems.append(f"{good[0].name}: not a readable wheel ({type(exc).__name__}: {exc})")
            continue
        if f"\nVersion: {version}\n" not in "\n" + text:
            problems.append(f"{good[0].name}: its METADATA is not version {version}")
    return problems


def fetch_wheels(folder: Path) -> int:
    """Download what the image lacks into ``folder`` (here, before the lease)."""
    folder.mkdir(exist_ok=True)                  # .gitignore keeps it out of git; it travels by carry
    for old in folder.glob("*.whl"):                                    # one version of each
        if any(_norm(old.name.split("-")[0]) == _norm(n) and old.name.split("-")[1] != v for n, v in WHEELS):
            old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON,
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(folder),
           *[f"{n}=={v}" for n, v in WHEELS]]
    rc = subprocess.run(cmd).returncode
    problems = check_wheels(folder)
    for p in problems:
        print(f"gpu_session: still missing: {p}", file=sys.stderr)
    total = sum(w.stat().st_size for w in folder.glob("*.whl"))
    print(f"{folder}: {len(list(folder.glob('*.whl')))} wheels, {total / 2**20:.0f} MiB (the device tool carries "
          f"64 MiB at most)")
    return 1 if rc or problems else 0


# --- the steps ---------------------------------------------------------------------------------
@dataclass
class Step:
    """One process of the session. ``argv`` runs on the GPU, ``dry`` under the simulator
    (None: the same); ``{py}`` is the interpreter, ``{r}`` the results folder."""

    name: str
    part: str                      # setup, gate, figures, codecs, suite
    limit: int                     # seconds on the GPU (SIGINT 10 s before, SIGKILL at it)
    estimate: int                  # seconds expected on a GPU
    why: str                       # what the estimate is made of
    argv: list
    dry: list | None = None
    needs: str | None = None       # a prerequisite: "userfaultfd", "swapdev"
    files: list = field(default_factory=list)
    dry_skip: str | None = None    # why the dry run leaves it out (it would change this machine)


#: the device tool stops a command at 600 s; packing and the start of Python need a few
BUDGET = 540
#: the simulator is slower per step even at its small sizes: the dry run's limits are scaled
DRY_SCALE = 2
PY = "{py}"
R = "{r}"

STEPS = [
    Step("environment", "setup", 10, 4,
         "imports numpy, numba, CuPy, nvCOMP; nvidia-smi; userfaultfd and FUSE probed",
         [PY, "benchmarks/gpu_checks.py", "environment", f"{R}/environment.json"], files=["environment.json"]),
    Step("smoke", "gate", 35, 10,
         "CuPy import and CUDA context ~2 s, the copy kernel compiled once (0.4 s to PTX here) and cached for "
         "every later process, 500 objects and one page round-tripped, one compaction",
         [PY, "benchmarks/gpu_checks.py", "smoke"]),
    Step("bench_device", "figures", 45, 25,
         "LZ4 blocks of captured pages (capture ~5 s); batches of 1 to 65536 objects (~100 MB at the largest) "
         "written and read 5 times against raw pinned copies at ~25-50 GB/s; one compaction; 2000 single pages "
         "at ~10-20 us each",
         [PY, "benchmarks/bench_device.py", "--batches", "1,16,256,4096,65536", "--repeats", "5",
          "--json", f"{R}/bench_device.json"],
         [PY, "benchmarks/bench_device.py", "--smoke", "--json", f"{R}/bench_device.json"],
         files=["bench_device.json"]),
    Step("pool_size", "figures", 25, 8,
         "an arena grown to 3/4 of the free device memory in 1 GiB commits (~60 GiB on an H100): mapping "
         "physical memory, no copy; reallocation would stop near half the card",
         [PY, "benchmarks/gpu_checks.py", "pool-size", "1024"],
         [PY, "benchmarks/gpu_checks.py", "pool-size", "16"]),
    Step("bench_latency", "figures", 40, 25,
         "1000 compressible pages, 3 passes of store/load/invalidate one page at a time on host and cuda "
         "(~10-30 us a call on cuda: one direct copy and one sync) against the bare lz4.block loop",
         [PY, "benchmarks/bench_latency.py", "--n", "1000", "--passes", "3", "--backends", "host,cuda",
          "--json", f"{R}/bench_latency.json"],
         [PY, "benchmarks/bench_latency.py", "--n", "40", "--passes", "1", "--backends", "host,cuda",
          "--codecs", "lz4", "--json", f"{R}/bench_latency.json"],
         files=["bench_latency.json"]),
    Step("devpool_bench", "figures", 40, 25,
         "the main job on 8192 captured pages (32 MiB) through Zswap over the cuda pool with lz4-njit: 5 passes "
         "of store and load, single pages, a sweep of 3 batch sizes; CPU compression bounds it",
         [PY, "-m", "devpool.cli", "bench", "--backend", "cuda", "--quiet", "--max-pages", "8192",
          "--sweep", "1,16,256", "--json", f"{R}/devpool-bench.json", "--plot", f"{R}/devpool-bench.png"],
         [PY, "-m", "devpool.cli", "bench", "--backend", "cuda", "--quiet", "--max-pages", "16",
          "--sweep", "1,4", "--json", f"{R}/devpool-bench.json", "--plot", f"{R}/devpool-bench.png"],
         files=["devpool-bench.json", "devpool-bench.png"]),
    Step("bench_region", "figures", 55, 40,
         "24 regions (2 patterns x 2 passes x 4 subjects, 8 policy runs), each a handler process that imports "
         "CuPy and loads the cached kernel (~1 s), 5000 touches of 2048 pages each (~20-100 us a fault)",
         [PY, "benchmarks/bench_region.py", "--backend", "cuda", "--region-pages", "2048", "--accesses", "5000",
          "--patterns", "zipf,random", "--passes", "2", "--policy-accesses", "5000", "--delay-sweep", "",
          "--json", f"{R}/bench_region.json"],
         [PY, "benchmarks/bench_region.py", "--backend", "cuda", "--region-pages", "32", "--accesses", "60",
          "--patterns", "random", "--passes", "1", "--policy-accesses", "60", "--delay-sweep", "", "--no-zram",
          "--json", f"{R}/bench_region.json"],
         needs="userfaultfd", files=["bench_region.json"]),
    Step("bench_swapdev", "figures", 40, 30,
         "the kernel's swap into a cuda pool through FUSE and a loop device, against zram and a swap file: one "
         "pass, a 64 MiB region under a 32 MiB cgroup limit, 2000 touches per pattern (~150 us a fault)",
         [PY, "benchmarks/bench_swapdev.py", "--backend", "cuda", "--subjects", "devpool-lz4,devpool-raw,zram,swapfile",
          "--passes", "1", "--limit-mb", "32", "--region-mb", "64", "--touches", "2000", "--max-pages", "4096",
          "--json", f"{R}/bench_swapdev.json"],
         needs="swapdev", files=["bench_swapdev.json"],
         dry_skip="the dry run does not swap this machine (machine-wide state, shared with other work); "
                  "bench_swapdev has its own smoke test"),
    Step("codecs", "codecs", 35, 15,
         "lz4-device compiled once (compress 4.5 s, decompress 1.9 s to PTX here) and cached; nvCOMP's "
         "library loaded; 256 pages through Zswap with each, on its own",
         [PY, "benchmarks/gpu_checks.py", "codecs"]),
    Step("bench_lz4_device", "codecs", 40, 25,
         "65536 captured pages (256 MiB) on the device; compress with 3 worker counts and decompress, 7 timed "
         "launches each (at 5-60 GB/s: under 0.1 s each); every block checked against lz4.block; nvCOMP beside",
         [PY, "benchmarks/bench_lz4_device.py", "--max-pages", "65536", "--repeats", "7",
          "--json", f"{R}/bench_lz4_device.json"],
         [PY, "benchmarks/bench_lz4_device.py", "--smoke", "--json", f"{R}/bench_lz4_device.json"],
         files=["bench_lz4_device.json"]),
    Step("suite", "suite", 115, 90,
         "pytest --gpu -m device: ~240 tests (the contract and frontend suites on cuda and chaos-cuda, the "
         "storage's own, the device codecs) in 4 processes; kernels from the cache",
         [PY, "-m", "pytest", "--gpu", "-m", "device", "-q", "-p", "no:cacheprovider", "-rfE",
          "--junitxml", f"{R}/suite.xml", "{xdist}", "{timeout}"],
         # the simulator: the same selection in one module of each kind (all of it runs in CI)
         [PY, "-m", "pytest", "-m", "device", "-q", "-p", "no:cacheprovider", "-rfE",
          "--junitxml", f"{R}/suite.xml", "tests/kernels/test_device_storage.py", "tests/codecs/test_single_page.py",
          "{timeout}"],
         files=["suite.xml"]),
]
#: runs instead of the rest when the smoke fails: what explains it
DIAGNOSE = Step("diagnose", "gate", 30, 10, "nvidia-smi, numba's and CuPy's view of the device, a storage",
                [PY, "benchmarks/gpu_checks.py", "diagnose"])
#: the install before the first step (the real run only): pip from .whl/, then devpool assembled
INSTALL_LIMIT = 20


def limits_total(steps=STEPS) -> int:
    return INSTALL_LIMIT + sum(s.limit for s in steps)


# --- running a step --------------------------------------------------------------------------
@dataclass
class Outcome:
    step: Step
    limit: float
    status: str                    # ok, failed (exit N), interrupted at its limit, not run: why
    seconds: float = 0.0


def run_step(argv: list, log: Path, limit: float, env: dict, cwd: Path) -> tuple[int | None, float, bool]:
    """Run ``argv`` (its own process group) with output to ``log``. At ``limit - grace``
    the group gets SIGINT (pytest writes its summary and XML, a benchmark keeps what it
    saved), at ``limit`` SIGKILL. Returns (exit status or None if killed, seconds,
    interrupted)."""
    grace = min(10.0, max(5.0, limit / 4), limit / 2)   # pytest takes ~2 s to write its summary
    t0 = time.monotonic()
    with open(log, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        interrupted = False
        try:
            rc = p.wait(timeout=max(0.1, limit - grace))
        except subprocess.TimeoutExpired:
            interrupted = True
            _signal_group(p, signal.SIGINT)
            try:
                rc = p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
                rc = None
        finally:
            if p.poll() is None:                    # the session itself was interrupted
                _signal_group(p, signal.SIGKILL)
                p.wait()
            # what the step left behind in its group (a helper process) would hold the GPU
            # until the machine goes back: the group ends with the step
            _signal_group(p, signal.SIGKILL)
    return rc, time.monotonic() - t0, interrupted


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):     # the group is gone
        pass


class Session:
    def __init__(self, args):
        self.dry = args.dry_run
        self.scale = DRY_SCALE if self.dry else 1
        self.budget = BUDGET * self.scale
        self.t0 = time.monotonic()
        self.out = Path(args.out)
        self.results = Path(args.results)
        self.py = args.python
        self.only = set(args.only.split(",")) if args.only else None
        self.outcomes: list[Outcome] = []
        self.gpu = "dryrun" if self.dry else _gpu_name()
        self.day = datetime.date.today().isoformat()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.cwd = ROOT
        self.prereq: dict = {}

    # the archive: everything under results/, re-packed after every step
    @property
    def archive(self) -> Path:
        return self.out / f"gpu-session-{self.gpu}-{self.day}.tar.gz"

    @property
    def summary(self) -> Path:
        return self.out / f"summary-{self.gpu}-{self.day}.txt"

    def pack(self) -> None:
        (self.results / "summary.txt").write_text(self.table())
        tmp = self.archive.with_suffix(".partial")
        with tarfile.open(tmp, "w:gz") as t:
            t.add(self.results, arcname=".")
        os.replace(tmp, self.archive)
        shutil.copyfile(self.results / "summary.txt", self.summary)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def argv(self, step: Step) -> list:
        raw = step.dry if (self.dry and step.dry is not None) else step.argv
        xdist = ["-n", "4"] if _has("xdist") else []
        timeout = ["--timeout", str(60 * self.scale)] if _has("pytest_timeout") else []
        out = []
        for a in raw:
            if a == "{xdist}":
                out += xdist
            elif a == "{timeout}":
                out += timeout
            else:
                out.append(a.replace(PY, self.py).replace(R, str(self.results)))
        return out

    def run(self, step: Step) -> Outcome:
        limit = float(step.limit * self.scale)
        why_not = self._why_not(step)
        if why_not is None and self.left() < 5:
            why_not = f"{self.left():.0f} s of the session's budget left"
        if why_not is not None:
            o = Outcome(step, limit, f"not run: {why_not}")
        else:
            limit = min(limit, self.left())
            rc, secs, interrupted = run_step(self.argv(step), self.results / f"{step.name}.txt", limit, self.env,
                                             self.cwd)
            status = ("interrupted at its limit (SIGINT), partial results kept" if interrupted else
                      "ok" if rc == 0 else f"failed (exit {rc})")
            o = Outcome(step, limit, status, secs)
        self.outcomes.append(o)
        print(f"== {step.name}: {o.status}" + (f" in {o.seconds:.0f} s (limit {o.limit:.0f} s)" if o.seconds else ""),
              flush=True)
        log = self.results / f"{step.name}.txt"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print("\n".join("   " + line for line in tail), flush=True)
        self.pack()
        return o

    def _why_not(self, step: Step) -> str | None:
        if self.only is not None and step.name not in self.only and step.part != "setup":
            return "not among --only"
        if self.dry and step.dry_skip:
            return step.dry_skip
        if step.needs:
            why = self.prereq.get(step.needs, f"{step.needs}: not probed (the environment step did not finish)")
            if why:
                return why
        if step.name == "bench_swapdev" and not (BENCH / "bench_swapdev.py").exists():
            return "benchmarks/bench_swapdev.py is not in this tree"
        return None

    def table(self) -> str:
        mode = (f"DRY RUN under numba's CUDA simulator, small sizes, limits x{self.scale}" if self.dry
                else f"GPU: {self.gpu}")
        lines = [f"devpool GPU session {self.day} - {mode}; budget {self.budget} s, steps' limits "
                 f"{limits_total() * self.scale} s, {time.monotonic() - self.t0:.0f} s so far",
                 f"{'step':<17}{'part':<8}{'GPU limit':>10}{'GPU est.':>9}{'limit':>7}{'took':>6}  status"]
        for o in self.outcomes:
            s = o.step
            took = f"{o.seconds:.0f}" if o.seconds else "-"
            lines.append(f"{s.name:<17}{s.part:<8}{s.limit:>10}{s.estimate:>9}{o.limit:>7.0f}{took:>6}  {o.status}")
        lines.append("why each GPU estimate (from what the step does; not a measurement, no GPU has run this):")
        lines += [f"  {o.step.name}: {o.step.why}" for o in self.outcomes]
        return "\n".join(lines) + "\n"

    def install(self) -> bool:
        """The carried wheels into a site folder and devpool assembled as installed (its
        package-dir mapping) in a run folder the steps import it from."""
        if self.dry:
            return True
        work = Path(tempfile.mkdtemp(prefix="devpool-gpu-session-"))   # fresh, ours: no planted path in /tmp
        site, run = work / "site", work / "run"
        run.mkdir()
        for name in ("tests", "benchmarks", "pyproject.toml", "README.md"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, run / name)
        shutil.copytree(ROOT / "devpool", run / "devpool")
        shutil.copytree(ROOT / "kernels", run / "devpool" / "kernels")
        shutil.copytree(ROOT / "host", run / "devpool" / "host")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(run), str(site), os.environ.get("PYTHONPATH")]))
        self.env["NUMBA_CACHE_DIR"] = str(work / "numba-cache")       # every step's processes share it
        self.cwd = run
        # the CLI tests start the `devpool` script beside the interpreter
        launcher = Path(self.py).with_name("devpool")
        if not launcher.exists():
            try:
                launcher.write_text(f"#!/bin/sh\nexec {self.py} -m devpool.cli \"$@\"\n")
                launcher.chmod(0o755)
            except OSError as exc:
                print(f"gpu_session: no devpool launcher beside {self.py} ({exc}): the CLI tests will fail")
        step = Step("install", "setup", INSTALL_LIMIT, 6, "pip installs 4 wheels (40 MB) offline", [])
        argv = [self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                "--upgrade", "--target", str(site), *map(str, sorted((ROOT / ".whl").glob("*.whl")))]
        rc, secs, _ = run_step(argv, self.results / "install.txt", INSTALL_LIMIT, self.env, ROOT)
        self.outcomes.append(Outcome(step, INSTALL_LIMIT, "ok" if rc == 0 else f"failed (exit {rc})", secs))
        print(f"== install: {self.outcomes[-1].status} in {secs:.0f} s", flush=True)
        return rc == 0


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return re.sub(r"[^A-Za-z0-9._-]+", "-", out[0]) if out else "unknown-gpu"
    except (OSError, subprocess.SubprocessError):
        return "unknown-gpu"


def preflight(args) -> list[str]:
    """Everything that would waste the lease, checked before anything starts."""
    problems = [f"missing wheel: {p}" for p in check_wheels(Path(args.wheels))]
    if problems:
        problems.append(f"fetch them here, before the run: {FETCH}; then carry [\".whl\"]")
    if not args.dry_run and not sys.version.startswith(PYTHON + "."):
        problems.append(f"this is Python {sys.version.split()[0]}; the wheels are for the image's {PYTHON}")
    if limits_total() > BUDGET:
        problems.append(f"the steps' limits add up to {limits_total()} s, over the budget of {BUDGET} s")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every step here, under the CUDA simulator, small")
    ap.add_argument("--fetch-wheels", action="store_true", help="download what the GPU image lacks into --wheels")
    ap.add_argument("--wheels", default=str(ROOT / ".whl"), help="the carried wheels (default .whl/)")
    ap.add_argument("--only", help="run only these steps (comma-separated), for a rerun")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-session-out"), help="where the 2 files go")
    ap.add_argument("--results", help="the steps' working folder (default: a fresh one under the temp dir); "
                    "it must not exist or be empty")
    ap.add_argument("--python", default=sys.executable, help="the interpreter the steps run")
    args = ap.parse_args(argv)
    # absolute, but not resolved: a virtual environment's python is a link that must stay one
    args.python = os.path.abspath(args.python) if os.sep in args.python else (shutil.which(args.python) or args.python)
    if args.fetch_wheels:
        return fetch_wheels(Path(args.wheels))
    if args.only:
        unknown = set(args.only.split(",")) - {s.name for s in STEPS}
        if unknown:
            ap.error(f"--only: no step {', '.join(sorted(unknown))}; steps: {', '.join(s.name for s in STEPS)}")
    problems = preflight(args)
    if problems:
        print("gpu_session: refusing to start:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    if args.results is None:
        args.results = tempfile.mkdtemp(prefix="devpool-results-")
    results = Path(args.results)
    if results.is_symlink() or (results.exists() and (not results.is_dir() or any(results.iterdir()))):
        print(f"gpu_session: refusing to start: --results {results} exists and is not an empty folder "
              f"(nothing is deleted for you)", file=sys.stderr)
        return 2
    results.mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    s = Session(args)
    if s.dry:
        s.env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        s.env.pop("NUMBA_ENABLE_CUDASIM", None)
    if not s.install():
        print("gpu_session: the carried wheels did not install: stopping (see install.txt)")
        s.pack()
        return 1
    try:
        s.run(STEPS[0])
        try:
            s.prereq = json.loads((results / "environment.json").read_text())["prerequisites"]
        except (OSError, ValueError, KeyError):
            pass
        for step in STEPS[1:]:
            o = s.run(step)
            if step.part == "gate" and o.status.startswith(("failed", "interrupted")):
                s.run(DIAGNOSE)
                print("gpu_session: the smoke failed: stopping early, leaving device time for a rerun")
                break
    except KeyboardInterrupt:                    # the step's group is gone (run_step); keep what was done
        print("gpu_session: interrupted")
        s.pack()
        print(s.table(), end="")
        return 130
    print(s.table(), end="")
    print(f"results: {s.archive} and {s.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

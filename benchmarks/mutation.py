"""Mutation testing of devpool's core modules: does the suite catch small deliberate bugs?

Each *mutant* is one small change to one module (a comparison flipped, ``+`` for ``-``,
``and`` for ``or``, a ``not`` dropped, a constant off by one, ``True`` for ``False``, a
condition negated, a statement deleted). A mutant is *killed* when the tests that cover
its module fail (or crash, or time out), and *survives* when they pass: a survivor is
either a bug the suite would not notice or a change that does not alter behaviour (an
equivalent mutant), so survivors are read by hand; the report shows each one's code.

The run works on copies of the tree, never on the checkout (their own host/ and kernels/
too, not the editable install's); it samples mutants with a fixed seed (every point is
listed, ``--sample`` of them are run), runs the covering test files with ``-x``, leaving
out the tests parametrised on the simulated cuda backend (``-k "not cuda"``: they run
the same code above storage, slower; tests/kernels/test_device_storage.py's simulator tests stay), with
hypothesis set not to shrink, so a run takes minutes, not hours. Not part of CI.

    python benchmarks/mutation.py --sample 150 --jobs 2 --timeout 120 --out report.txt
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: module -> the test files that cover it: its own suites first (most kills are there, and
#: -x stops at the first), then the adversarial, hardening and device files that also
#: drive it (a few seconds each; the first run without them counted 21 of their kills
#: as survivors). test_churn is left out: 30 s a mutant, and it killed none of the
#: survivors it was tried on.
TARGETS = {
    "devpool/zswap/frontend.py": ["tests/zswap/test_frontend.py", "tests/zswap/test_stateful.py", "tests/zswap/test_edge_pages.py",
                          "tests/zswap/test_layering.py", "tests/zswap/test_single_vs_batch.py", "tests/pool/test_hardening.py",
                          "tests/zswap/test_backing.py", "tests/kernels/test_device_storage.py"],
    "devpool/pool/pool.py": ["tests/pool/test_contract.py", "tests/pool/test_stateful.py", "tests/pool/test_chaos.py",
                         "tests/pool/test_single_vs_batch.py", "tests/pool/test_hardening.py", "tests/project/test_bounds.py",
                         "tests/cli/test_input_fuzz.py", "tests/kernels/test_device_storage.py"],
    "devpool/pool/allocator.py": ["tests/pool/test_allocator.py", "tests/pool/test_contract.py", "tests/pool/test_stateful.py",
                              "tests/pool/test_single_vs_batch.py", "tests/pool/test_hardening.py"],
    # chaos is the hostile backend every contract test also runs on
    "devpool/pool/chaos.py": ["tests/pool/test_chaos.py", "tests/pool/test_contract.py", "tests/zswap/test_frontend.py"],
    "devpool/codecs/base.py": ["tests/codecs/test_contract.py", "tests/zswap/test_edge_pages.py", "tests/codecs/test_single_page.py",
                           "tests/project/test_bounds.py", "tests/pool/test_hardening.py", "tests/zswap/test_frontend.py"],
    "devpool/_packed.py": ["tests/pool/test_contract.py", "tests/zswap/test_edge_pages.py", "tests/codecs/test_contract.py",
                           "tests/pool/test_chaos.py", "tests/zswap/test_frontend.py"],
}

#: runs pytest with a hypothesis profile that stops at the first failure (no shrinking),
#: then checks that every devpool module the tests imported came from the tree under
#: test (checked after, not before: importing devpool first would import numba before
#: the test configuration turns on the CUDA simulator)
RUNNER = """
import os, sys
from hypothesis import Phase, settings
settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None, deadline=None)
settings.load_profile("mutation")
import pytest
rc = pytest.main(sys.argv[1:])
tree = os.path.realpath(os.getcwd())
for name, mod in sorted(sys.modules.items()):
    where = getattr(mod, "__file__", None)
    if (name == "devpool" or name.startswith("devpool.")) and where and \\
            not os.path.realpath(where).startswith(tree + os.sep):
        print(f"{name} was imported from {where}, not from the tree under test {tree}")
        sys.exit(3)                                     # an error, never a kill (rc 1)
sys.exit(rc)
"""

#: An editable install maps devpool.host and devpool.kernels (the top-level host/ and
#: kernels/ folders) to the checkout it was installed from, through a finder that
#: PYTHONPATH does not override: without this, a copy of the tree would test its own
#: devpool/ against another checkout's storage and kernels. Put on PYTHONPATH, this
#: sitecustomize maps them beside whichever devpool/ comes first on sys.path (it also
#: reaches the Python subprocesses the tests start).
SITECUSTOMIZE = """
import importlib.machinery, importlib.util, os, sys

class _TreeSubpackages:
    NAMES = {"devpool.host": "host", "devpool.kernels": "kernels"}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in cls.NAMES:
            return None
        top = importlib.machinery.PathFinder.find_spec("devpool")
        if top is None or not top.submodule_search_locations:
            return None
        folder = os.path.join(os.path.dirname(list(top.submodule_search_locations)[0]), cls.NAMES[name])
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])

sys.meta_path.insert(0, _TreeSubpackages)
"""

SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
            ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
            ast.BitXor: ast.BitOr, ast.Mod: ast.FloorDiv}


class Mutant:
    def __init__(self, path: str, node: ast.AST, replacement: str, what: str):
        self.path, self.what, self.replacement = path, what, replacement
        self.mutated_line = ""          # the first mutated line, set once the mutant parses
        self.span = (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        l0, c0, l1, c1 = self.span
        start = sum(len(x) for x in lines[:l0 - 1]) + len(lines[l0 - 1].encode()[:c0].decode())
        end = sum(len(x) for x in lines[:l1 - 1]) + len(lines[l1 - 1].encode()[:c1].decode())
        return source[:start] + self.replacement + source[end:]

    def __str__(self) -> str:
        return f"{self.path}:{self.span[0]}: {self.what}"

    def code(self) -> str:
        """The mutated line, for reading a survivor."""
        return f"`{self.mutated_line.strip()[:110]}`"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first))
    return ids


def mutants_of(path: str) -> list[Mutant]:
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    skip = _docstrings(tree)
    out: list[Mutant] = []

    def visit(node, in_fstring=False):
        if id(node) in skip or isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, (ast.Assign,)) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
            new = copy.deepcopy(node)
            new.ops = [SWAP_CMP[type(node.ops[0])]()]
            out.append(Mutant(path, node, ast.unparse(new), f"{type(node.ops[0]).__name__} -> "
                                                            f"{type(new.ops[0]).__name__}"))
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BIN:
            new = copy.deepcopy(node)
            new.op = SWAP_BIN[type(node.op)]()
            out.append(Mutant(path, node, f"({ast.unparse(new)})",
                              f"{type(node.op).__name__} -> {type(new.op).__name__}"))
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            out.append(Mutant(path, node, f"({ast.unparse(new)})", "and <-> or"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append(Mutant(path, node, f"({ast.unparse(node.operand)})", "drop not"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            out.append(Mutant(path, node, str(not node.value), f"{node.value} -> {not node.value}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            v = node.value
            out.append(Mutant(path, node, str(v + 1 if v != 1 else 0), f"{v} -> {v + 1 if v != 1 else 0}"))
        elif isinstance(node, (ast.AugAssign, ast.Expr)) and not (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            out.append(Mutant(path, node, "pass", f"delete `{ast.unparse(node)[:50]}`"))
        if isinstance(node, (ast.If, ast.While)):
            out.append(Mutant(path, node.test, f"not ({ast.unparse(node.test)})", "negate condition"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    good = []
    for m in out:
        try:
            mutated = m.apply(source)
            ast.parse(mutated)
        except SyntaxError:
            continue
        m.mutated_line = mutated.splitlines()[m.span[0] - 1]
        good.append(m)
    return good


#: pytest options of every run: first failure stops it, the simulated cuda backend is
#: left out (slow; the code above storage is the same), hypothesis replays one seed
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-k", "not cuda", "--hypothesis-seed=0"]


class Runs:
    """The pytest runs in flight, each in its own process group, so that an interrupt
    ends them (and whatever they started) at once. Interrupted, the run used to wait
    for the pytest its worker threads were waiting on: a baseline takes minutes, and
    the work directory stayed until it ended (past a minute on a busy machine)."""

    #: how long an interrupted pytest has to run its teardowns before it is killed
    GRACE_S = 5.0

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess | None:
        """``cmd`` run to its end (output captured); None when it timed out or was stopped."""
        with self._lock:
            if self.stopping:
                return None
            # its own session: a terminal's Ctrl-C reaches only us, and stop() ends the group
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True, **kw)
            self._procs.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._end(proc, signal.SIGKILL)
            proc.communicate()
            return None
        finally:
            with self._lock:
                self._procs.discard(proc)
        return None if self.stopping else subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def stop(self) -> None:
        """Start no more runs; interrupt those in flight (their teardowns run), then kill
        whatever is left of them after GRACE_S."""
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        for p in procs:
            self._end(p, signal.SIGINT)
        deadline = time.monotonic() + self.GRACE_S
        for p in procs:
            # (its worker thread reaps it: wait for the group to go, not on the Popen)
            while self._end(p, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._end(p, signal.SIGKILL)     # the group: also what the tests started

    @staticmethod
    def _end(proc: subprocess.Popen, sig: int) -> bool:
        """Send ``sig`` to the run's process group; False when the group is gone."""
        try:
            os.killpg(proc.pid, sig)         # its group outlives it while a member lives
        except (ProcessLookupError, PermissionError):
            return False
        return True


RUNS = Runs()


def in_parallel(jobs: int, fn, items) -> list:
    """``[fn(item) for item in items]`` on ``jobs`` threads. Interrupted (Ctrl-C, or a
    SIGTERM: see main), the queued items are dropped and the runs in flight ended before
    the threads are waited for, so the caller's cleanup follows within seconds."""
    ex = ThreadPoolExecutor(jobs)
    try:
        return list(ex.map(fn, items))
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        RUNS.stop()
        raise
    finally:
        ex.shutdown(wait=True)


def run_tests(tree: Path, tests: list[str], timeout: float, extra: list[str] = ()) -> str:
    cmd = [sys.executable, "-c", RUNNER, *PYTEST_ARGS, *extra, *tests]
    site = tree.parent / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(site)]), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = RUNS.run(cmd, timeout, cwd=tree, env=env)
    if proc is None:
        return "stopped" if RUNS.stopping else "timeout"
    if proc.returncode == 0:
        return "survived"
    if proc.returncode == 1:
        return "killed: " + " | ".join(l for l in proc.stdout.splitlines() if l.startswith("FAILED"))[:300]
    if proc.returncode < 0:
        # a signal (a segfault in compiled code, an abort): the run failed loudly, as it
        # would in CI, so the suite caught the mutant
        return f"crashed: signal {-proc.returncode}"
    return f"error rc={proc.returncode}: {proc.stdout[-300:]}{proc.stderr[-300:]}"


def copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", ".hypothesis", ".pytest_cache",
                                    "__pycache__", "results")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def replay(listing: str, everything: list[Mutant]) -> tuple[list[Mutant], list[str]]:
    """The mutants a ``--list`` (or a report's survivors) names, found in today's code:
    same module, kind and mutated line, the nearest to the listed line number (edits
    elsewhere move lines). Returns (mutants, the listed ones no longer there)."""
    found, gone = [], []
    left = list(everything)
    for entry in Path(listing).read_text().splitlines():
        entry = entry.strip()
        if "  `" not in entry or not entry.startswith("devpool/"):
            continue
        name, code = entry.split("  `", 1)
        path, line, what = name.split(":", 2)
        same = [m for m in left if m.path == path and m.what == what.strip() and m.code() == "`" + code]
        if not same:
            gone.append(entry)
            continue
        m = min(same, key=lambda m: abs(m.span[0] - int(line)))
        left.remove(m)
        found.append(m)
    return sorted(found, key=str), gone


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=80, help="mutants to run (sampled with --seed)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per mutant (past it: killed)")
    ap.add_argument("--module", action="append", help="only these modules (default: all targets)")
    ap.add_argument("--list", action="store_true", help="list the sampled mutants (with their code) and stop")
    ap.add_argument("--replay", help="run the mutants a --list (or a report's survivors) names instead of a "
                                     "sample: each found again in today's code by its kind and mutated line")
    ap.add_argument("--out", help="write the report here too")
    ap.add_argument("--deselect", action="append", default=[], help="a test node id to leave out (repeatable)")
    args = ap.parse_args(argv)

    modules = args.module or list(TARGETS)
    everything = [m for path in modules for m in mutants_of(path)]
    gone: list[str] = []
    if args.replay:
        sample, gone = replay(args.replay, everything)
    else:
        rng = random.Random(args.seed)
        sample = sorted(rng.sample(everything, min(args.sample, len(everything))), key=str)
    if args.list:
        print("\n".join(f"{m}  {m.code()}" for m in sample))
        return 0
    # a SIGTERM (kill, a CI step's timeout) cleans up as Ctrl-C does: killed runs had
    # left their copies of the tree behind
    signal.signal(signal.SIGTERM, _interrupted)
    work = Path(tempfile.mkdtemp(prefix="devpool-mutation-"))
    try:
        return _run_sample(args, argv, work, modules, everything, sample, gone)
    finally:
        shutil.rmtree(work, ignore_errors=True)        # also when interrupted or failing


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _run_sample(args, argv, work: Path, modules, everything, sample, gone) -> int:
    """Run ``sample`` in copies of the tree under ``work``; print and save the report."""
    (work / "site").mkdir()
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    trees = [copy_tree(work / f"tree{j}") for j in range(args.jobs)]
    extra = [f"--deselect={d}" for d in args.deselect]
    # the baseline runs on every tree at once: each must pass unmutated, and each compiles
    # its own numba cache now, not inside the first mutant's timeout
    every_test = sorted({t for m in modules for t in TARGETS[m]})
    t0 = time.time()
    baselines = in_parallel(args.jobs, lambda tree: run_tests(tree, every_test, 1800, extra), trees)
    baseline_s = time.time() - t0
    if any(b != "survived" for b in baselines):
        print(f"the unmutated tree does not pass its tests ({baselines}); nothing to measure")
        return 2
    free = list(trees)
    results: list[tuple[Mutant, str, float]] = []

    def one(m: Mutant):
        tree = free.pop()
        target = tree / m.path
        original = target.read_text()
        try:
            target.write_text(m.apply(original))
            t0 = time.time()
            verdict = run_tests(tree, TARGETS[m.path], args.timeout, extra)
            results.append((m, verdict, time.time() - t0))
            print(f"{verdict.split(':')[0]:9s} {time.time() - t0:5.0f}s  {m}", flush=True)
        finally:
            target.write_text(original)
            free.append(tree)

    t0 = time.time()
    in_parallel(args.jobs, one, sample)
    killed = [r for r in results if r[1].startswith(("killed", "crashed")) or r[1] == "timeout"]
    survived = [r for r in results if r[1] == "survived"]
    errors = [r for r in results if r not in killed and r not in survived]
    scored = len(killed) + len(survived)
    picked = (f"{len(sample)} replayed from {args.replay} ({len(gone)} of its mutants no longer in the code)"
              if args.replay else f"{len(sample)} sampled (seed {args.seed})")
    lines = [f"devpool mutation run: {len(everything)} mutation points in {len(modules)} modules, "
             f"{picked}, {time.time() - t0:.0f} s with {args.jobs} jobs "
             f"(after {baseline_s:.0f} s of unmutated baselines)",
             f"command: python benchmarks/mutation.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"pytest: {' '.join(PYTEST_ARGS + extra)}",
             f"score {len(killed)}/{scored} killed = {100 * len(killed) / max(scored, 1):.0f} %"
             f" ({sum(r[1] == 'timeout' for r in results)} by timeout, "
             f"{sum(r[1].startswith('crashed') for r in results)} by a crash; {len(errors)} errors not scored)"]
    for path in modules:
        k = sum(r[0].path == path for r in killed)
        s = sum(r[0].path == path for r in survived)
        if k + s:
            lines.append(f"  {path:24s} {k}/{k + s} killed")
    lines.append("survivors:")
    lines += [f"  {r[0]}  {r[0].code()}" for r in sorted(survived, key=lambda r: str(r[0]))]
    if gone:
        lines.append("not replayed (their code changed):")
        lines += [f"  {g}" for g in gone]
    if errors:
        lines.append("errors:")
        lines += [f"  {r[0]}: {r[1]}" for r in errors]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

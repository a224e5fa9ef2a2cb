"""benchmarks/gpu_session.sh: the first GPU lease must not be wasted (issue 28).

Checked here, without a GPU: the run refuses before starting anything when a carried
wheel is missing; the steps' limits add up inside the budget, in the order the answers
matter; a step stopped at its limit gets SIGINT first and keeps what it measured (a
benchmark's JSON, pytest's XML); and the whole dry run passes under the simulator with
the same wheel check, steps and result files, and ends with its timing table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_session as gs  # noqa: E402

sys.path.pop(0)

#: the names pip saved them under on 2026-12-07 (``--fetch-wheels``)
FETCHED = ["lz4-4.4.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
           "zstandard-0.25.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
           "nvidia_nvcomp_cu13-6.0.0.12-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
           "nvidia_libnvcomp_cu13-6.0.0.12-py3-none-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"]


def stand_in_wheels(folder: Path, names=FETCHED) -> Path:
    """Wheels with the fetched names and a METADATA each (what the check reads; the dry
    run installs nothing: the wheels are for the image's Python)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        dist, version = name.split("-")[:2]
        with zipfile.ZipFile(folder / name, "w") as z:
            z.writestr(f"{dist}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\n"
                                                               f"Version: {version}\n")
    return folder


def session(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PY": sys.executable, **(env or {})})


def test_refuses_before_starting_anything_naming_what_is_missing(tmp_path):
    wheels = stand_in_wheels(tmp_path / "whl", FETCHED[:2])
    (wheels / "zstandard-0.24.0-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(b"")       # a second version
    (wheels / FETCHED[2].replace("x86_64", "aarch64")).write_bytes(b"")                     # another machine's
    out, results = tmp_path / "out", tmp_path / "results"
    p = session("--wheels", str(wheels), "--out", str(out), "--results", str(results))
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr
    assert "refusing to start" in err and "bash benchmarks/gpu_session.sh --fetch-wheels" in err
    assert "nvidia-nvcomp-cu13==6.0.0.12" in err and "aarch64" in err          # named, with what was found
    assert "nvidia-libnvcomp-cu13==6.0.0.12" in err and "lz4==" not in err
    assert "zstandard: 2 wheels" in err
    assert not out.exists() and not results.exists()                           # nothing started


def test_refuses_a_results_folder_it_did_not_make(tmp_path):
    """The results folder is never emptied for you: a folder with files in it (or a
    planted link) is refused before anything runs."""
    wheels = stand_in_wheels(tmp_path / "whl")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(busy)
    for results in (busy, link):
        p = session("--dry-run", "--wheels", str(wheels), "--out", str(tmp_path / "out"), "--results", str(results))
        assert p.returncode == 2 and "is not an empty folder" in p.stderr, p.stderr
    assert (busy / "precious").read_text() == "x" and not (tmp_path / "out").exists()


def test_only_runs_the_steps_named_and_says_why_not_the_rest(tmp_path):
    out = tmp_path / "out"
    p = session("--dry-run", "--only", "environment", "--wheels", str(stand_in_wheels(tmp_path / "whl")),
                "--out", str(out), "--results", str(tmp_path / "r"), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "== environment: ok" in p.stdout and "== smoke: not run: not among --only" in p.stdout
    assert session("--dry-run", "--only", "nosuch").returncode == 2


def test_a_broken_wheel_is_named(tmp_path):
    wheels = stand_in_wheels(tmp_path / "whl")
    (wheels / FETCHED[0]).write_bytes(b"not a zip")
    assert gs.check_wheels(wheels) == [f"{FETCHED[0]}: not a readable wheel (BadZipFile: File is not a zip file)"]
    assert gs.check_wheels(stand_in_wheels(tmp_path / "good")) == []


def test_limits_add_up_inside_the_budget_in_the_order_that_matters():
    assert gs.limits_total() <= gs.BUDGET < 600                    # the device tool's one-command limit
    parts = [s.part for s in gs.STEPS]
    assert parts[:2] == ["setup", "gate"] and gs.STEPS[1].name == "smoke"
    order = ["setup", "gate", "figures", "codecs", "suite"]
    assert parts == sorted(parts, key=order.index)
    assert all(0 < s.estimate <= s.limit for s in gs.STEPS)
    assert len({s.name for s in gs.STEPS}) == len(gs.STEPS)
    # CPU-only work has no place in the lease: no compile-only check, no CPU suite
    assert not [s.name for s in gs.STEPS if "check-kernels" in s.argv]
    suite = next(s for s in gs.STEPS if s.part == "suite")
    assert " ".join(suite.argv).count("--gpu -m device") == 1


SAVER = """
import sys, time
sys.path.insert(0, {bench!r})
from _common import save
rows = []
for i in range(1000):
    rows.append(i)
    save({{"rows": rows}}, {path!r}, complete=False)
    time.sleep(0.05)
"""


def test_a_step_at_its_limit_gets_sigint_and_keeps_what_it_measured(tmp_path):
    path = tmp_path / "r.json"
    code = SAVER.format(bench=str(ROOT / "benchmarks"), path=str(path))
    rc, secs, interrupted = gs.run_step([sys.executable, "-c", code], tmp_path / "log", 4, dict(os.environ), tmp_path)
    assert interrupted and rc == -2 and secs < 4 + 1                     # died of the SIGINT, not a kill
    assert "KeyboardInterrupt" in (tmp_path / "log").read_text()          # SIGINT, not a kill
    r = json.loads(path.read_text())
    assert r["complete"] is False and len(r["rows"]) >= 5


def test_a_step_that_ignores_sigint_is_killed_at_its_limit(tmp_path):
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    rc, secs, interrupted = gs.run_step([sys.executable, "-c", code], tmp_path / "log", 3, dict(os.environ), tmp_path)
    assert interrupted and rc is None and secs < 3 + 1


def test_what_a_step_leaves_running_ends_with_it(tmp_path):
    """A step that starts a helper and exits: the helper (same process group) is ended
    when the step is, not left holding the GPU until the machine goes back."""
    pidfile = tmp_path / "helper.pid"
    code = (f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n")
    rc, _, interrupted = gs.run_step([sys.executable, "-c", code], tmp_path / "log", 30, dict(os.environ), tmp_path)
    assert rc == 0 and not interrupted
    pid = int(pidfile.read_text())
    for _ in range(100):                          # reaped by init once killed
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError("the step's helper was left running")


def test_pytest_stopped_at_its_limit_writes_its_summary_and_xml(tmp_path):
    (tmp_path / "test_slow.py").write_text(textwrap.dedent("""
        import time
        def test_quick():
            pass
        def test_slow():
            time.sleep(60)
        """))
    xml = tmp_path / "suite.xml"
    rc, _, interrupted = gs.run_step([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml",
                                      str(xml), "test_slow.py"], tmp_path / "log", 12, dict(os.environ), tmp_path)
    assert interrupted and rc == 2
    assert "KeyboardInterrupt" in (tmp_path / "log").read_text()
    assert 'name="test_quick"' in xml.read_text()


def test_dry_run_runs_every_step_with_the_same_files(tmp_path):
    """The whole rehearsal, here under the simulator (about 2 minutes on 2 vCPUs)."""
    out, results = tmp_path / "out", tmp_path / "results"
    p = session("--dry-run", "--wheels", str(stand_in_wheels(tmp_path / "whl")), "--out", str(out),
                "--results", str(results), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    files = sorted(f.name for f in out.iterdir())
    day = files[0].split("-dryrun-")[1].split(".")[0]
    assert files == [f"gpu-session-dryrun-{day}.tar.gz", f"summary-dryrun-{day}.txt"]    # 2 of the 8 allowed
    summary = (out / files[1]).read_text()
    assert "why each GPU estimate" in summary
    status = {line.split()[0]: line for line in summary.splitlines()[2:] if line and not line.startswith(" ")}
    for step in gs.STEPS:
        line = status[step.name]
        if step.dry_skip:
            assert f"not run: {step.dry_skip}" in line
        elif step.needs == "userfaultfd" and "not run" in line:
            assert "userfaultfd unusable" in line
        else:
            assert line.rstrip().endswith("ok"), line
    with tarfile.open(out / files[0]) as t:
        names = {Path(n).name for n in t.getnames()}
    for step in gs.STEPS:
        if status[step.name].rstrip().endswith("ok"):
            assert f"{step.name}.txt" in names and set(step.files) <= names, (step.name, names)
    for name in ("bench_device.json", "bench_lz4_device.json"):
        assert json.loads((results / name).read_text())["complete"] is True
    assert "why each GPU estimate" in p.stdout                       # the table, printed last


def test_a_failed_smoke_runs_the_diagnosis_and_stops(tmp_path):
    """The gate: every step's interpreter fails here (a stand-in that exits 3), so the
    smoke fails; the diagnosis runs, nothing after the smoke does, and the two files
    are there with the table saying so."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no device here' >&2\nexit 3\n")
    broken.chmod(0o755)
    out = tmp_path / "out"
    p = session("--dry-run", "--python", str(broken), "--wheels", str(stand_in_wheels(tmp_path / "whl")),
                "--out", str(out), "--results", str(tmp_path / "r"), timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "== smoke: failed (exit 3)" in p.stdout and "== diagnose: failed (exit 3)" in p.stdout
    assert "the smoke failed: stopping early" in p.stdout
    assert "== bench_device" not in p.stdout and "== suite" not in p.stdout
    assert len(list(out.iterdir())) == 2

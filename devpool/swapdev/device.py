"""``devpool swapon`` / ``swapoff`` / ``status``: the machine's swap into a devpool pool.

A device is four things set up in order and undone in reverse: a server process (the
``Zswap`` and its pool; :mod:`devpool.swapdev.server`) serving one file over FUSE, a loop
device over that file (``swapon`` refuses a FUSE file itself: "swapfile has holes"),
``mkswap``, and ``swapon --discard=pages`` (the kernel then punches freed clusters, and
their pages leave the pool). Each device has a state folder under ``DEVPOOL_RUN_DIR``
(default ``/run/devpool``): ``swapN/{state.json, ctl.sock, mnt/, server.log}``, so that
``swapoff`` can undo what a crashed run left: it finds the loop devices, mounts and
processes of each folder from the system itself (``/proc/swaps``, loop's
``backing_file``, ``/proc/mounts``, the server's command line), not from the state file
alone.

A setup that fails undoes whatever it did and raises one error that says what is
missing: not root, no FUSE, no loop devices, a tool not installed, a bad option.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

from .._checks import check_int, check_real
from .._errors import BadInputError, DevpoolError

__all__ = ["SwapDevice", "SwapDeviceError", "devices", "parse_size", "status", "swap_device",
           "swapoff", "swapoff_all", "swapon"]

PAGE = 4096
#: a swap area needs at least 10 pages (mkswap); the slot bitmap costs a byte per page
MIN_SIZE = 10 * PAGE
MAX_SIZE = 1 << 40
BACKENDS = ("auto", "host", "cuda", "chaos")
#: reader threads a server may run (each holds 1 MiB of locked reply pages and a descriptor)
MAX_THREADS = 16
TOOLS = ("losetup", "mkswap", "swapon", "swapoff")
SERVER_MODULE = "devpool.swapdev.server"


class SwapDeviceError(DevpoolError, OSError):
    """A swap device could not be set up or undone; the message says which step and why."""

    def __str__(self) -> str:            # the message alone, not "[Errno N] ...": one plain line
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


def run_dir() -> str:
    return os.path.abspath(os.environ.get("DEVPOOL_RUN_DIR", "/run/devpool"))


# --- argument checks -------------------------------------------------------------------------
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text) -> int:
    """``4G``, ``512M``, ``65536K``, or bytes; a whole number of 4 KiB pages, at least 40 KiB
    and at most 1 TiB. BadInputError otherwise."""
    if isinstance(text, (int,)) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d{1,16})\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise BadInputError(f"size must be a number of bytes with an optional K, M, G or T suffix "
                                f"(such as 4G), got {text!r}")
        value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value % PAGE:
        raise BadInputError(f"size must be a whole number of {PAGE}-byte pages, got {value} bytes")
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise BadInputError(f"size must be between {MIN_SIZE} bytes (10 pages) and 1T, got {value} bytes")
    return value


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise SwapDeviceError("cannot read MemTotal from /proc/meminfo")


def pool_limit(size: int, max_pool_percent: float) -> int:
    """The pool's limit in bytes: ``max_pool_percent`` of RAM (zswap's rule), at most the
    device's size, in whole pages, at least 1 MiB."""
    limit = min(size, int(_mem_total() * max_pool_percent / 100)) // PAGE * PAGE
    return max(limit, 1 << 20)


# --- prerequisites ---------------------------------------------------------------------------
def check_prerequisites() -> None:
    """One SwapDeviceError naming the first thing missing: root, FUSE, loop, a tool."""
    if os.geteuid() != 0:
        raise SwapDeviceError(errno.EPERM, "needs root (it mounts, attaches a loop device and "
                              "runs swapon): run it with sudo")
    if not os.path.exists("/dev/fuse"):
        raise SwapDeviceError(errno.ENOENT, "no FUSE: /dev/fuse does not exist (modprobe fuse)")
    if not os.path.exists("/dev/loop-control"):
        raise SwapDeviceError(errno.ENOENT, "no loop devices: /dev/loop-control does not exist "
                              "(modprobe loop)")
    for tool in TOOLS:
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}") \
                and not os.path.exists(f"/sbin/{tool}"):
            raise SwapDeviceError(errno.ENOENT, f"no {tool}: install util-linux")


def _tool(name: str) -> str:
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if path and os.path.exists(path):
            return path
    return name


def _run(argv: list[str], timeout: float = 120) -> str:
    """Run a tool; its stdout, or SwapDeviceError with its stderr."""
    try:
        done = subprocess.run([_tool(argv[0])] + argv[1:], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SwapDeviceError(errno.ETIMEDOUT, f"{' '.join(argv)} did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise SwapDeviceError(errno.EIO, f"{' '.join(argv)} failed: {why[-1] if why else done.returncode}")
    return done.stdout


# --- what the system says ----------------------------------------------------------------------
def active_swaps() -> list[str]:
    """Devices and files now in use as swap (/proc/swaps)."""
    with open("/proc/swaps") as f:
        return [line.split()[0] for line in f.readlines()[1:] if line.strip()]


def loops_over(path: str) -> list[str]:
    """Loop devices whose backing file is ``path``."""
    found = []
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(bf) as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)") == path:
            found.append("/dev/" + bf.split("/")[3])
    return sorted(found)


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _fuse_connection(path: str) -> str | None:
    """The /sys/fs/fuse/connections entry of the mount at ``path`` (its device minor)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == path:
                minor = parts[2].split(":")[1]
                conn = f"/sys/fs/fuse/connections/{minor}"
                return conn if os.path.isdir(conn) else None
    return None


def _control_marker(control: str) -> str:
    """What a server's command line (its JSON configuration) says about its control socket:
    it names the one device the server serves."""
    return f'"control": {json.dumps(control)}'


def _server_alive(pid: int | None, control: str | None = None) -> bool:
    """True when ``pid`` is a devpool swap server (not a recycled pid) and, given
    ``control``, the server of the device whose control socket that is: a pid recycled
    by another device's server is not this device's (undoing this one must never kill
    that one)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return SERVER_MODULE.encode() in cmd and (control is None or _control_marker(control).encode() in cmd)


def server_pids(mentioning: str = "") -> list[int]:
    """Pids of devpool swap servers whose command line mentions ``mentioning``."""
    found = []
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmd, "rb") as f:
                text = f.read()
        except OSError:
            continue
        if SERVER_MODULE.encode() in text and mentioning.encode() in text:
            found.append(int(cmd.split("/")[2]))
    return found


def ask(control: str, request: str = "stats", timeout: float = 3.0) -> dict:
    """One request over a server's control socket; its JSON reply (SwapDeviceError if none)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(control)
            s.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)
    except (OSError, ValueError) as exc:
        raise SwapDeviceError(errno.ECONNREFUSED, f"the server at {control} does not answer: {exc}") from None


# --- one device --------------------------------------------------------------------------------
class SwapDevice:
    """A devpool swap device (a state folder); :meth:`swapoff` undoes it, also as a
    context manager's exit."""

    def __init__(self, folder: str):
        self.folder = folder
        self.name = os.path.basename(folder)
        self.mountpoint = os.path.join(folder, "mnt")
        self.file = os.path.join(self.mountpoint, "swap")
        self.control = os.path.join(folder, "ctl.sock")
        self.state_path = os.path.join(folder, "state.json")
        self.state: dict = {}
        try:
            with open(self.state_path) as f:
                self.state = json.load(f)
        except (OSError, ValueError):
            pass

    @property
    def device(self) -> str | None:
        """The loop device (``/dev/loopN``) the kernel swaps to; None once it is gone."""
        loops = self.loops()
        return loops[0] if loops else None

    def loops(self) -> list[str]:
        """The loop devices over this device's file. A dead mount can hide the name loop
        reports; the state file's device counts too, but only while loop still names a
        file under this device's mount point: once detached, its name may be another
        device's (then naming it must reach that one, and undoing this one must not)."""
        loops = loops_over(self.file)
        loop = self.state.get("loop")
        if isinstance(loop, str) and loop not in loops and os.path.exists(loop):
            try:
                with open(f"/sys/block/{os.path.basename(loop)}/loop/backing_file") as f:
                    if f.read().strip().startswith(self.mountpoint):
                        loops.append(loop)
            except OSError:
                pass
        return loops

    @property
    def default_backing(self) -> str:
        """Where the device's own backing file goes (named after the folder, so that a
        crashed run whose state file is lost still finds it): a disk, never the run
        directory, which may be tmpfs, i.e. RAM."""
        tag = hashlib.sha1(os.fsencode(os.path.abspath(self.folder))).hexdigest()[:12]
        return os.path.join(os.environ.get("DEVPOOL_BACKING_DIR", "/var/tmp"), f"devpool-{self.name}-{tag}.swap")

    @property
    def pid(self) -> int | None:
        """The server's pid: from the state file, else found by its command line (which
        names this folder's control socket), for a run whose state file is lost."""
        if _server_alive(self.state.get("pid"), self.control):
            return self.state["pid"]
        found = server_pids(_control_marker(self.control))
        return found[0] if found else None

    def save(self, **changes) -> None:
        self.state.update(changes)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.state_path)

    def stats(self) -> dict:
        """The server's statistics (zswap's names, requests served, fault-service times)."""
        return ask(self.control, "stats")

    def swapoff(self) -> list[str]:
        """Undo in order: swapoff, loop detach, unmount, server exit, folder. Works on
        what a crashed run left; returns the steps taken. Raises SwapDeviceError only if
        something could not be undone (it says what is left)."""
        return _teardown(self)

    def __enter__(self) -> "SwapDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.swapoff()

    def __repr__(self) -> str:
        return f"<devpool.SwapDevice {self.name} {self.device or 'no loop'} at {self.folder}>"


def devices() -> list[SwapDevice]:
    """Every devpool swap device (state folder) under the run directory. The folders are
    trusted (swapoff stops what they name and deletes their files), so the run directory
    is checked as swapon checks it (SwapDeviceError if another user could write it), and
    an entry that is not a real folder of ours (a planted link) is no device."""
    root = run_dir()
    if not os.path.lexists(root):
        return []
    _check_run_dir(root)
    found = []
    for folder in sorted(glob.glob(os.path.join(root, "swap[0-9]*"))):
        try:
            st = os.lstat(folder)
        except FileNotFoundError:        # undone by another command since it was listed
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            found.append(SwapDevice(folder))
    return found


def _check_run_dir(root: str) -> None:
    """The run directory holds control sockets and mount points of root's swap: it must
    be a real directory of ours that nobody else can write (a planted link or a shared
    folder is refused)."""
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise SwapDeviceError(errno.ENOTDIR, f"run directory {root} is not a directory (a link?): refused")
    if st.st_uid not in (0, os.geteuid()):        # root's, or ours: nobody else's
        raise SwapDeviceError(errno.EPERM, f"run directory {root} belongs to uid {st.st_uid}: refused")
    if st.st_mode & 0o022:
        raise SwapDeviceError(errno.EPERM, f"run directory {root}: others may write it (mode "
                              f"{stat.filemode(st.st_mode)}): refused")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SwapDeviceError(errno.EACCES, f"cannot read run directory {root}: devpool swap devices "
                              f"are root's (run it with sudo)")


@contextlib.contextmanager
def _dir_locked(path: str):
    """An exclusive flock on a directory for the block (brief: taken to create a folder,
    or to claim one)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claim(folder: str) -> int | None:
    """Lock a device's folder: a swapon holds it for its whole setup, an undo for its
    whole run, so a ``swapoff`` racing either is refused (it removed the folder of a
    device being set up, which then failed with a raw FileNotFoundError) and two undos
    of one device never run at once. Returns the descriptor that holds the lock (closing
    it releases; a command that dies releases with it), or None if the folder is gone.
    The caller holds the run directory's lock, so a new folder is claimed before any
    other command can see it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SwapDeviceError(errno.EBUSY, f"{os.path.basename(folder)}: another devpool command is setting "
                              f"it up or undoing it; try again once that has finished") from None
    return fd


def _new_folder() -> tuple[str, int]:
    """A new device folder, claimed (see :func:`_claim`): (its path, the lock's descriptor)."""
    root = run_dir()
    os.makedirs(root, mode=0o700, exist_ok=True)
    _check_run_dir(root)
    with _dir_locked(root):
        for i in range(1024):
            folder = os.path.join(root, f"swap{i}")
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                continue
            os.mkdir(os.path.join(folder, "mnt"), 0o700)
            return folder, _claim(folder)
    raise SwapDeviceError(errno.ENOSPC, f"1024 devpool swap devices exist under {root}")


def swapon(size="4G", *, backend: str = "auto", compressor: str = "lz4", max_pool_percent: float = 20,
           backing: str | None = None, priority: int = 100, spin_us: float = 0, threads: int = 1,
           start_timeout: float = 120, activate: bool = True, _lock: bool = True,
           _loop_dio: bool = True, _gather: bool = True) -> SwapDevice:
    """Start a server, mount its file, attach a loop device, ``mkswap`` and ``swapon
    --discard=pages -p priority``. Returns the device; on any failure undoes every step
    and raises (BadInputError for a bad option, SwapDeviceError for the system).

    ``backing``: a swap file for pages zswap refuses (created 0600); None makes one under
    /var/tmp that goes with the device; ``"none"`` keeps none (then a refused page's
    write fails and the kernel keeps the page in RAM). ``spin_us``: how long the server
    keeps polling after a request before it sleeps (0: at once; spinning 50 us doubled
    the fault p50 on this 2-vCPU machine, where the spinner takes the CPU the faulting
    thread and loop's worker need: bench_swapdev's levers). ``threads``: how many threads
    read ``/dev/fuse`` (each on a cloned descriptor, sleeping in a blocking read; more
    than one ignores ``spin_us``; one thread gathers the whole-page writes waiting at
    once into one store, ``_gather=False`` stops that: a measurement). ``activate=False`` stops after the
    loop device (no mkswap, no swapon): a block device over the pool that tests and
    benchmarks read and write directly.
    """
    size = parse_size(size)
    if backend not in BACKENDS:
        raise BadInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from ..codecs import get_codec
    get_codec(compressor)                         # UnknownCodecError (a BadInputError kind) now
    max_pool_percent = check_real(max_pool_percent, "max_pool_percent", lo=0, hi=100, lo_open=True)
    priority = check_int(priority, "priority", lo=0, hi=32767)
    spin_us = check_real(spin_us, "spin_us", lo=0, hi=1e6)
    threads = check_int(threads, "threads", lo=1, hi=MAX_THREADS)
    if backing is not None and (not isinstance(backing, str) or not backing or "\0" in backing):
        raise BadInputError(f"backing must be a file path or 'none', got {backing!r}")
    if len(os.fsencode(os.path.join(os.path.abspath(run_dir()), "swap1023", "ctl.sock"))) > 107:
        raise BadInputError(f"run directory {run_dir()!r} is too long for a control socket's path "
                            f"(107 bytes at most): set DEVPOOL_RUN_DIR to a shorter one")
    _check_backing(backing)
    check_prerequisites()
    limit = pool_limit(size, max_pool_percent)
    folder, hold = _new_folder()
    try:
        return _set_up(SwapDevice(folder), hold, size, backend, compressor, limit, backing, priority,
                       spin_us, threads, start_timeout, activate, _lock, _loop_dio, _gather)
    finally:
        os.close(hold)


def _set_up(dev: SwapDevice, hold: int, size, backend, compressor, limit, backing, priority, spin_us,
            threads, start_timeout, activate, _lock, _loop_dio, _gather) -> SwapDevice:
    remove_backing = backing is None
    if backing is None:
        backing = dev.default_backing
    elif backing == "none":
        backing = None
    else:
        backing = os.path.abspath(backing)
    cfg = {"name": dev.name, "size": size, "backend": backend, "compressor": compressor,
           "pool_limit": limit, "backing": backing, "remove_backing": remove_backing,
           "mountpoint": dev.mountpoint, "control": dev.control, "spin_us": spin_us, "threads": threads,
           "lock": bool(_lock), "gather": bool(_gather)}
    dev.save(**cfg, priority=priority, pid=None, loop=None, created=time.time())
    try:
        _start_server(dev, cfg, start_timeout)
        loop = _run(["losetup", "--find", "--show", f"--direct-io={'on' if _loop_dio else 'off'}",
                     "--sector-size", str(PAGE),
                     dev.file]).strip()
        dev.save(loop=loop)
        if activate:
            _run(["mkswap", "-L", f"devpool-{dev.name}", loop])
            _run(["swapon", "--discard=pages", "-p", str(priority), loop])
    except BaseException as exc:
        try:
            _teardown(dev, hold)
        except Exception as undo:
            raise SwapDeviceError(errno.EIO, f"{exc}; undoing it failed too: {undo}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, DevpoolError):
            raise SwapDeviceError(exc.errno or errno.EIO, str(exc)) from exc
        raise
    return dev


def _check_backing(backing: str | None) -> None:
    """A named backing file is emptied when the device starts (no page outlives the
    server that wrote it): one that holds data is refused, so a mistyped ``--backing``
    destroys nothing (what a crashed device left there: remove it first)."""
    if backing is None or backing == "none":
        return
    try:
        st = os.lstat(backing)
    except OSError:
        return                                   # a new file (or the server says why not)
    if stat.S_ISREG(st.st_mode) and st.st_size:
        raise BadInputError(f"backing file {backing!r} exists and holds {st.st_size} bytes: refused "
                            f"(the device empties its backing file); remove it or name a new path")


def _start_server(dev: SwapDevice, cfg: dict, timeout: float) -> None:
    log = open(os.path.join(dev.folder, "server.log"), "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, json.dumps(cfg)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()
    dev.save(pid=proc.pid)
    line = b""
    deadline = time.monotonic() + timeout
    import selectors
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise SwapDeviceError(errno.ETIMEDOUT, f"the server did not start within {timeout:.0f} s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    proc.stdout.close()
    try:
        msg = json.loads(line)
    except ValueError:
        proc.wait(5)
        raise SwapDeviceError(errno.EIO, f"the server exited ({proc.returncode}) before it was ready; "
                              f"see {dev.folder}/server.log") from None
    if "error" in msg:
        proc.wait(10)
        err = msg["error"]
        if "BackendUnavailableError" in err or "UnknownCodecError" in err:
            raise BadInputError(err.split(": ", 1)[1])
        raise SwapDeviceError(errno.EIO, f"the server could not start: {err}")
    dev.save(warnings=msg.get("warnings", []), backend_used=msg.get("backend"))
    # the child is reaped by whoever undoes the device; detach the Popen so Python does
    # not warn about a running child when this object goes
    proc.returncode = 0


# --- undoing ---------------------------------------------------------------------------------
def _abort_connection(dev: SwapDevice) -> bool:
    """Abort the FUSE connection (all its I/O fails at once): for a server that is gone or
    hung, so that swapoff and umount cannot wait on it forever."""
    conn = _fuse_connection(dev.mountpoint)
    if conn is None:
        return False
    try:
        with open(os.path.join(conn, "abort"), "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def _teardown(dev: SwapDevice, hold: int | None = None) -> list[str]:
    """Undo ``dev``, its folder claimed (``hold``: the caller's claim, else one taken here;
    SwapDeviceError EBUSY while another command holds it)."""
    if hold is not None:
        return _undo(dev)
    with _dir_locked(os.path.dirname(dev.folder)):
        hold = _claim(dev.folder)
    if hold is None:
        return []                                  # undone meanwhile
    try:
        return _undo(dev)
    finally:
        os.close(hold)


def _undo(dev: SwapDevice) -> list[str]:
    steps, left = [], []
    pid = dev.pid                         # once: found by its command line, it goes when it exits
    alive = responsive = _server_alive(pid, dev.control)
    if alive:
        try:
            ask(dev.control, "ping", timeout=5)
        except SwapDeviceError:
            alive = responsive = False    # alive but not answering: a hung (or stopped) server
    if not alive and _abort_connection(dev):
        steps.append("aborted the FUSE connection (server gone or not answering)")
    elif not responsive and _server_alive(pid, dev.control):
        # no fusectl to abort through: the connection ends when its last /dev/fuse
        # descriptor closes, so a hung server goes first (else swapoff would wait on it)
        _stop_server(pid, patient=False)
        steps.append(f"server {pid} killed (it did not answer): its FUSE connection ended")
    loops = dev.loops()
    swaps = active_swaps()
    for loop in loops:
        if loop in swaps:
            try:
                _swapoff(loop)
                steps.append(f"swapoff {loop}")
            except SwapDeviceError as exc:
                left.append(str(exc))
        try:
            _run(["losetup", "-d", loop])
            steps.append(f"losetup -d {loop}")
        except SwapDeviceError as exc:
            left.append(str(exc))
    if mounted(dev.mountpoint):
        from .fuse import umount
        try:
            umount(dev.mountpoint)
        except OSError:
            _abort_connection(dev)
            try:
                umount(dev.mountpoint, lazy=True)
            except OSError as exc:
                left.append(str(exc))
        steps.append(f"umount {dev.mountpoint}")
    if _server_alive(pid, dev.control):
        _stop_server(pid, patient=responsive)
        steps.append(f"server {pid} stopped")
    if dev.state.get("remove_backing", True):      # ours (or the state is lost: the default is ours)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dev.default_backing)
    if left:
        raise SwapDeviceError(errno.EBUSY, f"{dev.name}: could not undo: {'; '.join(left)}")
    for leaf in ("ctl.sock", "state.json", "state.json.tmp", "server.log"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(dev.folder, leaf))
    for folder in (dev.mountpoint, dev.folder):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(folder)
    return steps


def _swapoff(loop: str, tries: int = 10) -> None:
    """swapoff, retried a while on ENOMEM: the kernel must bring every page back into RAM
    (and into its owner's cgroup), and a process that is dying (of SIGBUS, its server
    gone) frees its pages a moment later."""
    for i in range(tries):
        try:
            _run(["swapoff", loop], timeout=3600)
            return
        except SwapDeviceError as exc:
            if "allocate memory" not in str(exc) or i == tries - 1:
                if "allocate memory" in str(exc):
                    raise SwapDeviceError(errno.ENOMEM, f"{exc} (swapoff brings every page back into RAM, "
                                          f"and into its owner's memory cgroup: make room and run "
                                          f"`devpool swapoff` again)") from None
                raise
            time.sleep(0.5)


def _stop_server(pid: int, patient: bool = True) -> None:
    """Wait for the server to leave (it does once unmounted), then KILL (it ignores TERM:
    it may hold swapped pages); a server that did not answer (hung, or stopped) is killed
    at once."""
    plan = ((None, 10.0), (signal.SIGKILL, 5.0)) if patient else ((signal.SIGKILL, 5.0),)
    for sig, wait in plan:
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _server_alive(pid):
                return
            time.sleep(0.02)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _find(device: str) -> SwapDevice:
    for dev in devices():
        if device in (dev.name, dev.folder) or device in dev.loops():
            return dev
    raise BadInputError(f"{device!r} is not a devpool swap device (see `devpool status`)")


def swapoff(device) -> list[str]:
    """Undo one device, named by its loop device (``/dev/loop3``) or its name (``swap0``)."""
    dev = device if isinstance(device, SwapDevice) else _find(str(device))
    return dev.swapoff()


def swapoff_all() -> list[str]:
    """Undo every devpool swap device, and whatever a crashed run left: devpool FUSE mounts
    and the loop devices over them under the run directory, with no state folder."""
    steps, errors = [], []
    for dev in devices():
        try:
            steps += dev.swapoff()
        except SwapDeviceError as exc:
            errors.append(str(exc))
    if errors:
        raise SwapDeviceError(errno.EBUSY, "; ".join(errors))
    return steps


# --- status ----------------------------------------------------------------------------------
def status() -> list[dict]:
    """One row per device: the server's statistics, or why it did not answer."""
    rows = []
    for dev in devices():
        row = {"name": dev.name, "device": dev.device, "disksize": dev.state.get("size"),
               "folder": dev.folder}
        try:
            row.update(dev.stats())
        except SwapDeviceError as exc:
            row["error"] = "server dead or not answering: `devpool swapoff` cleans up" \
                if not _server_alive(dev.pid, dev.control) else str(exc)
        rows.append(row)
    return rows


def human_size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


COLUMNS = ("NAME", "BACKEND", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STORED",
           "SAME", "WRITTENBACK", "READS", "WRITES", "FAULT-P50")


def format_status(rows: list[dict]) -> str:
    """zramctl-style columns, one device a line."""
    lines = [COLUMNS]
    for r in rows:
        if "error" in r:
            lines.append((r["device"] or r["name"], "-", "-", human_size(r["disksize"])) + ("-",) * 8 + (r["error"],))
            continue
        z = r["zswap"]
        data = (z["stored_pages"] + z["backing_pages"]) * PAGE
        p50 = r["read_service_p50_us"]
        lines.append((r["device"] or r["name"], z["backend"], z["compressor"], human_size(r["size"]), human_size(data),
                      human_size(z["stored_compressed_bytes"]), human_size(z["pool_total_size"]), str(z["stored_pages"]),
                      str(z["same_filled_pages"]), str(z["written_back_pages"]), str(r["reads"]),
                      str(r["writes"]), "-" if p50 is None else f"{p50:.0f}us"))
    widths = [max(len(str(line[i])) for line in lines if i < len(line)) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(c).ljust(w) if i < len(widths) else str(c)
                               for i, (c, w) in enumerate(zip(line, widths + [0] * 8))).rstrip()
                     for line in lines)


@contextlib.contextmanager
def swap_device(size="64M", **options):
    """``with swap_device("1G", backend="host") as dev:`` a swap device for the block's
    duration (``dev.device``, ``dev.stats()``); undone on exit, also on error."""
    dev = swapon(size, **options)
    try:
        yield dev
    finally:
        dev.swapoff()

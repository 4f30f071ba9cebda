"""`python -m msa_cli.supervise -c supervisord.conf`: supervisord, with the sandbox's imports done once.

It is supervisord — same options, same XML-RPC, same process groups, restarts and logs — with one difference.
Before it starts, it imports the modules named in $MSA_PRELOAD (space-separated). Then a program whose command is
`<this python> -m <module> [args…]` runs in the child supervisord has just forked, in place of the execve that would
start a new interpreter. The child changes its environment, stdio and process title to what that execve would have
given it, and runs the module as `__main__`.

Why: every server of the sandbox imports FastAPI, SQLAlchemy, pydantic, OpenTelemetry, aio-pika… — about 0.8 s of
CPU and 100 MB each. Ten of them on two cores made `make up` take 5 s and hold 840 MB. Imported once, before the
fork, the work is done once and the pages are shared copy-on-write. gunicorn's `--preload` and multiprocessing's
forkserver (`set_forkserver_preload`) do the same; supervisord has no such option, and its one seam for it is
`ServerOptions.execve`.

What the child keeps from supervisord is what a fork keeps: supervisord's objects in memory (unused; supervisord
closed their file descriptors before calling execve) and the already-imported modules. The preloaded modules must
therefore not read the environment or start threads at import time: if a thread is running after the preload,
programs are started with execve as usual. MSA_PRELOAD unset or empty: plain supervisord.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import io
import os
import runpy
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import NoReturn

from supervisor import supervisord
from supervisor.options import ServerOptions

PRELOAD_ENV = "MSA_PRELOAD"

# The signals supervisord catches (ServerOptions.setsignals); an exec'd interpreter would start with the defaults.
_SUPERVISORD_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR2)


class _Preloaded:
    """When the preload began and which files it imported: a program forked after one of them changed would run
    the old code, so it gets a new interpreter instead (someone edited a service and restarted it)."""

    started = 0.0
    files: tuple[str, ...] = ()

    @classmethod
    def changed(cls) -> str | None:
        for path in cls.files:
            try:
                if os.stat(path).st_mtime > cls.started:
                    return path
            except OSError:
                return path
        return None


def preload(modules: Sequence[str]) -> list[str]:
    """Import what the programs will import; returns the modules that failed (their programs import them then)."""
    _Preloaded.started = time.time()
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the program itself will meet (and report) the same error
            print(f"msa_cli.supervise: could not preload {name}:\n{traceback.format_exc()}", file=sys.stderr)
            failed.append(name)
    _Preloaded.files = tuple(sorted({f for m in list(sys.modules.values())
                                     if isinstance(f := getattr(m, "__file__", None), str)}))
    # Imported objects live until exit: keep the collector from walking them (and so from writing to the pages
    # the children share).
    gc.collect()
    gc.freeze()
    return failed


def module_command(filename: str, argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(module, args) if argv is `<this interpreter> -m <module> [args…]`, else None."""
    if len(argv) < 3 or argv[1] != "-m" or not _same_file(filename, sys.executable):
        return None
    return argv[2], list(argv[3:])


def run_module_here(module: str, args: list[str], env: Mapping[str, str]) -> NoReturn:
    """In a child supervisord forked: become `python -m module args…` and exit with its status."""
    code: int = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in _SUPERVISORD_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # The title as `ps` shows an argv; set first, as setproctitle reads the environment it started with.
        _set_title(" ".join(["python", "-m", module, *args]))
        os.environ.clear()
        os.environ.update(env)
        _fresh_stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
        _fresh_path(env.get("PYTHONPATH", ""))
        sys.argv = [module, *args]  # run_module puts the module's file name in argv[0]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = _exit_status(exit_.code)
    except BaseException:  # noqa: BLE001 - reported as an uncaught exception would be, then exit 1
        traceback.print_exc()
    finally:
        # What interpreter shutdown would do before exiting: wait for non-daemon threads, run atexit handlers
        # (span exporters flush there), flush stdio. Then leave without unwinding into supervisord's code.
        try:
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        os._exit(code)


class PreloadingOptions(ServerOptions):
    """supervisord's options, whose execve runs `-m` programs in the forked child when preloading is on."""

    fork_run = False

    def execve(self, filename: str, argv: list[str], env: dict[str, str]) -> None:
        command = module_command(filename, argv) if self.fork_run else None
        if command is not None and (edited := _Preloaded.changed()):
            os.write(2, f"msa_cli.supervise: {edited} changed since supervisord imported it: {command[0]} starts in "
                        "an interpreter of its own (`make down && make up` preloads the new code)\n".encode())
            command = None
        if command is None:
            return super().execve(filename, argv, env)
        run_module_here(*command, env)


def main(args: list[str] | None = None) -> None:
    modules = os.environ.get(PRELOAD_ENV, "").split()
    if modules:
        started = time.monotonic()
        failed = preload(modules)
        threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if threads:
            print(f"msa_cli.supervise: threads running after the preload ({', '.join(threads)}); programs will be "
                  "started with execve", file=sys.stderr)
        PreloadingOptions.fork_run = not threads
        print(f"msa_cli.supervise: preloaded {len(modules) - len(failed)} modules in "
              f"{time.monotonic() - started:.2f} s", file=sys.stderr)
    supervisord.ServerOptions = PreloadingOptions  # main() builds its options from this name
    supervisord.main(args)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): printed, status 1, as the interpreter does
    return 1


def _fresh_stdio(unbuffered: bool) -> None:
    # supervisord dup2'ed its pipes onto 0/1/2; the text layers above them are supervisord's, and PYTHONUNBUFFERED
    # is read only at interpreter start: build them as a new interpreter would (stderr always line-buffered).
    def writer(fd: int) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        return io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding="utf-8",
                                errors="backslashreplace" if fd == 2 else "strict", write_through=unbuffered,
                                line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)))

    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdin, sys.stdout, sys.stderr = stdin, writer(1), writer(2)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _fresh_path(pythonpath: str) -> None:
    # `python -m` puts the working directory first, then $PYTHONPATH; supervisord's were its own.
    extra = [os.path.abspath(p) for p in pythonpath.split(os.pathsep) if p]
    sys.path[:1] = [os.getcwd(), *(p for p in extra if p not in sys.path)]


def _set_title(title: str) -> None:
    # `ps` and `top` would otherwise show supervisord's command line for every program. SPT_NOENV: keep the
    # environment block intact (the runner finds a run's processes by /proc/<pid>/environ). setproctitle finds
    # the memory it may write by the environment as it was at start, so this runs before the environment changes.
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    own = "SPT_NOENV" not in os.environ
    os.environ["SPT_NOENV"] = "1"
    setproctitle(title)
    if own:
        del os.environ["SPT_NOENV"]


if __name__ == "__main__":
    main()

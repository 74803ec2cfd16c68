"""Ctrl-C without half-done work: a critical section that finishes before the interrupt is
raised, and an undo that puts files back as they were when a command (or one step of it) began.

Every file mscale writes is replaced atomically (a temp file renamed over the old one), so a file
is never torn; what an interrupt can leave behind is a *set* of files half updated: some months of
an ingest, some symbols of an import. `Undo` hard-links the files in scope aside when the step
begins (cheap: no data is copied, and the old bytes survive the rename that replaces a file) and,
on Ctrl-C, removes the files the step created and links the old ones back. Only Ctrl-C triggers
it (a KeyboardInterrupt, or any error raised after Ctrl-C was pressed: a library may swallow the
KeyboardInterrupt and fail later, see `honour_ctrl_c`); other errors keep their documented
behaviour (an ingest keeps the rows it received), and a killed process (SIGKILL) keeps what it
wrote, its undo links removed by the next command.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

UNDO_PREFIX = ".undo-"  # <folder>/.undo-<pid>-<n>/: hidden, outside every shard and cache glob
_counter = count()
_requested = False  # Ctrl-C was pressed under `honour_ctrl_c`


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextmanager
def honour_ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered, so that one swallowed by a
    library (pyarrow's lazy import of pandas does) is raised again at the next
    `check_interrupted()`. The command line runs every command under it."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _requested = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


def interrupt_requested() -> bool:
    """Whether Ctrl-C was pressed under `honour_ctrl_c`: an exception raised after it is most
    likely its consequence (a library half-way through an import when the interrupt hit it)."""
    return _requested


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed and its KeyboardInterrupt got lost; a
    checkpoint for long loops (a block of the feature build, a page of an ingest)."""
    if _requested:
        raise KeyboardInterrupt


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block to its end even when Ctrl-C arrives meanwhile; the KeyboardInterrupt is raised
    as the block is left. A no-op outside the main thread (signals only reach the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt here
            elif previous != signal.SIG_IGN:
                signal.raise_signal(signal.SIGINT)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_undo(folder: Path) -> None:
    """Drop the undo links a killed process left in `folder` (its writes stand, as for any kill)."""
    try:
        entries = list(Path(folder).glob(UNDO_PREFIX + "*"))
    except OSError:
        return
    for entry in entries:
        try:
            pid = int(entry.name[len(UNDO_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


class Undo:
    """The files `scope()` lists, as they are now; `restore()` puts exactly those back.

    `scope` is called now and again on restore: a file it lists then that did not exist now is
    removed, a file that was replaced or removed gets its old bytes back. The links live in a
    hidden folder under `scratch_parent` (same file system as the files, for hard links).
    """

    def __init__(self, scope: Callable[[], Iterable[Path]], scratch_parent: Path) -> None:
        self._scope = scope
        self._scratch = Path(scratch_parent) / f"{UNDO_PREFIX}{os.getpid()}-{next(_counter)}"
        self._saved: dict[Path, tuple[Path, int]] = {}
        for i, path in enumerate(sorted(set(scope()))):
            if not path.is_file():
                continue
            if not self._scratch.exists():
                self._scratch.mkdir(parents=True)
            link = self._scratch / str(i)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links
                shutil.copy2(path, link)
            self._saved[path] = (link, path.stat().st_ino)

    def restore(self) -> None:
        """Every file in scope exactly as it was when this Undo was made; the links are removed."""
        with deferred_interrupt():
            for path in set(self._scope()) - set(self._saved):
                path.unlink(missing_ok=True)
            for path, (link, inode) in self._saved.items():
                try:
                    unchanged = path.stat().st_ino == inode
                except FileNotFoundError:
                    unchanged = False
                if not unchanged:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(link, path)
            self.discard()

    def discard(self) -> None:
        """Keep the files as they are now; drop the links."""
        shutil.rmtree(self._scratch, ignore_errors=True)


def files_under(root: Path, folders: Iterable[str]) -> Callable[[], list[Path]]:
    """A scope: every file under `root/<folder>` for each folder (hidden files included, so a
    temp file an interrupted write left is removed too)."""

    def scope() -> list[Path]:
        out = []
        for folder in folders:
            base = Path(root) / folder
            if base.is_dir():
                out.extend(p for p in base.rglob("*") if p.is_file() and UNDO_PREFIX not in p.as_posix())
        return out

    return scope


@contextmanager
def rollback_on_interrupt(root: Path, folders: Iterable[str]) -> Iterator[None]:
    """On Ctrl-C inside the block, every file under `root/<folder>` is put back as it was when the
    block began (new files removed, replaced or deleted ones restored), then the KeyboardInterrupt
    (or the error the interrupt caused) goes on; otherwise the files stay as the block left them."""
    folders = tuple(folders)
    root = Path(root)
    remove_stale_undo(root)
    if not root.is_dir():
        dirs_before: set[Path] = set()
    else:
        dirs_before = {p for f in folders for p in [root / f, *(root / f).rglob("*")] if p.is_dir()}
    undo = Undo(files_under(root, folders), root)
    try:
        yield
    except BaseException as e:
        if not (isinstance(e, KeyboardInterrupt) or interrupt_requested()):
            raise
        undo.restore()
        with deferred_interrupt():
            new_dirs = [p for f in folders for p in [root / f, *(root / f).rglob("*")] if p.is_dir() and p not in dirs_before]
            for d in sorted(new_dirs, key=lambda p: len(p.parts), reverse=True):
                try:
                    d.rmdir()  # only when empty
                except OSError:
                    pass
        raise
    finally:
        undo.discard()

"""Follow growing log files (osqueryd results, Zeek logs) across rotation and truncation, with
checkpoints in the StateStore so a restart neither loses nor double-counts a line.

How exactly-once works: `poll()` reads complete lines after the checkpoint and returns them as a
batch with the position reached. The caller derives whatever it derives from the lines and, in ONE
SQLite transaction, writes that and `commit(batch, conn)`. A crash before COMMIT leaves the old
checkpoint and none of the derived rows, so the lines are read again; a crash after COMMIT leaves
both. If the caller's transaction fails, call `rewind()` so the in-memory position (and the parser's
header state) go back to the stored checkpoint.

Rotation (Zeek renames `conn.log` to `conn.2026-11-27-19-00-00.log` and opens a new `conn.log`;
logrotate does the same or copies and truncates):
  * the path now has a different (device, inode) than the checkpoint: the old inode is looked up
    among the files of the same directory; its remaining lines are read first (a final line without
    newline counts, since the rotated file is complete), then the tailer switches to the new file at
    offset 0;
  * same inode but smaller than the checkpoint offset, or the first bytes changed: truncated or
    replaced in place; start again at offset 0;
  * when the old inode is gone, the old content is looked for by its first-KB fingerprint among the
    `<stem>*` siblings: a rotated file a post-processor already gzip-compressed, or logrotate's
    copytruncate copy (`conn.log.1`); its unread rest is read first.
A partial last line of the live file is left for the next poll (a writer may be half-way through).

TSV header state: Zeek writes `#separator`, `#fields`, `#types`... once at the top of each file.
The tailer keeps those lines in the checkpoint, so after a restart in the middle of a file the parser
is primed with the header before it sees data lines.

Two ways to read: line by line (`FileTailer`, `ZeekTailer`, `OsqueryTailer`: a TailLine per line,
parsed per line), or a block of bytes at a time (`ZeekBatchTailer`: complete lines as one
`TailBlock` of about `batch_bytes`, parsed into `zeekbatch.ZeekBatch` columns). Both share the
rotation, truncation and checkpoint machinery above and read a file's bytes after the checkpoint
the same way (`zeekbatch.iter_blocks`: blocks of complete lines); only how a block is taken (split
into lines, or kept whole) and parsed differs, so a checkpoint is always a byte offset at a line
boundary.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sqlite3
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from scheduler.collect import zeekbatch
from scheduler.collect.state import Checkpoint, StateStore
from scheduler.collect.warnlimit import WarnLimiter

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 1024
READ_CHUNK = 1 << 20
# A configured source that does not exist is said at start and then once an hour (even without
# -v: a typo in a path must not look like a quiet network). Keyed by path, shared by all tailers.
MISSING_SOURCES = WarnLimiter(log, burst=1, period_s=3600.0)


@dataclass(slots=True)
class TailLine:
    """One complete line. `lineno` counts lines of this file (inode), starting at 1."""

    path: str
    lineno: int
    text: str
    new_file: bool = False   # first line read from a file the tailer just switched to


@dataclass(slots=True)
class TailBlock:
    """Complete lines of one file as bytes (ZeekBatchTailer): `data` starts at byte `offset` (of
    the decompressed stream for .gz) with line `first_lineno`; `lines` lines in all."""

    path: str
    first_lineno: int
    offset: int
    data: bytes
    lines: int
    new_file: bool = False   # starts at the file's first line


@dataclass(slots=True)
class TailBatch:
    source: str
    lines: list[TailLine]
    position: Checkpoint | None   # where the batch ends; commit() stores it
    items: list[Any] = field(default_factory=list)   # parsed records (subclasses fill)
    blocks: list[TailBlock] = field(default_factory=list)   # batch mode: the bytes read

    def __len__(self) -> int:
        """Lines consumed (in either mode)."""
        return len(self.lines) + sum(b.lines for b in self.blocks)

    @property
    def nbytes(self) -> int:
        """Bytes read in batch mode (a poll that read `batch_bytes` or more: more is waiting)."""
        return sum(len(b.data) for b in self.blocks)


def _fingerprint(path: str, size: int) -> str:
    n = min(FINGERPRINT_BYTES, size)
    if n <= 0:
        return ""
    try:
        with open(path, "rb") as handle:
            head = handle.read(n)
    except OSError:
        return ""
    return f"{len(head)}:{hashlib.sha1(head).hexdigest()}"


def _open(path: str):
    """Binary handle; rotated files compressed by a post-processor are read through gzip."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _fingerprint_matches(path: str, expected: str, default: bool = True) -> bool:
    """True when the file still starts with the bytes the fingerprint was taken from."""
    if not expected:
        return default
    n_str, _, digest = expected.partition(":")
    try:
        n = int(n_str)
        with _open(path) as handle:
            head = handle.read(n)
    except (OSError, ValueError, EOFError):
        return default
    if len(head) < n:
        return False
    return hashlib.sha1(head).hexdigest() == digest


#: Keep the last block of '#' lines (a new block starts with #separator or after #close).
_update_header = zeekbatch.update_header


class FileTailer:
    """Follow one path. `source` is the checkpoint key (defaults to the path)."""

    def __init__(self, path: str | Path, store: StateStore, source: str | None = None,
                 start_at_end: bool = False, max_lines: int = 10_000,
                 missing: str = "file") -> None:
        self.path = str(path)
        # "file": warn (hourly) while the followed file does not exist; "dir": only while its
        # directory does not (a Zeek stream with no traffic yet has no file, and that is fine)
        self.missing = missing
        self.store = store
        self.source = source or self.path
        self.start_at_end = start_at_end
        self.max_lines = max_lines
        self.pos: Checkpoint | None = None   # in memory; the store has the committed one
        self.rotations = 0
        self.truncations = 0
        self.lost_files = 0
        self.io_errors = 0       # files that could not be read to their end (truncated .gz, EIO)
        self.bad_lines = 0       # lines a parser failed on outside its own checks (see _parse_one)
        self._limiter = WarnLimiter(log, burst=20, period_s=60.0)
        self.rewind()

    # -- checkpoint ---------------------------------------------------------------------------------
    def rewind(self) -> None:
        """Go back to the stored checkpoint (after a failed transaction, or at start)."""
        self.pos = self.store.get_checkpoint(self.source)   # a fresh object: nothing shared
        self._on_rewind()

    def _on_rewind(self) -> None:
        """Hook for subclasses (rebuild parsers)."""

    def commit(self, batch: TailBatch, conn: sqlite3.Connection | None = None) -> None:
        """Store the batch's end position; pass the caller's transaction connection."""
        p = batch.position
        if p is None:
            return
        self.store.put_checkpoint(replace(p, header=list(p.header)), conn=conn)

    # -- reading ------------------------------------------------------------------------------------
    def _find_inode(self, device: int, inode: int) -> str | None:
        """Where did the file with this inode go? Look in the directory of the followed path."""
        directory = os.path.dirname(self.path) or "."
        base = os.path.basename(self.path)
        stem = base[:-4] if base.endswith(".log") else base
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        # likely rotation names first, then everything else
        names.sort(key=lambda n: (not n.startswith(stem), n))
        for name in names:
            cand = os.path.join(directory, name)
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if st.st_ino == inode and st.st_dev == device and os.path.isfile(cand):
                return cand
        return None

    def _find_copy(self, pos: Checkpoint) -> str | None:
        """Where did the content we were reading go, when its inode is not in the directory?

        A rotation post-processor may have compressed the rotated file (`conn.<stamp>.log.gz`), or
        logrotate's copytruncate may have copied it (`conn.log.1`, a new inode) before truncating.
        Candidates are `<stem>*` siblings (plain or .gz) that start with the bytes we fingerprinted;
        the most recently modified wins.
        """
        if not pos.fingerprint:
            return None
        directory = os.path.dirname(self.path) or "."
        base = os.path.basename(self.path)
        stem = base[:-4] if base.endswith(".log") else base
        me = os.path.abspath(self.path)
        try:
            names = [n for n in os.listdir(directory) if n.startswith(stem)]
        except OSError:
            return None
        cands = []
        for name in names:
            cand = os.path.join(directory, name)
            if os.path.abspath(cand) == me or not os.path.isfile(cand):
                continue
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if not cand.endswith(".gz") and st.st_size < pos.offset:
                continue
            cands.append((st.st_mtime, cand))
        for _, cand in sorted(cands, reverse=True):
            if _fingerprint_matches(cand, pos.fingerprint, default=False):
                return cand
        return None

    def _read_from(self, path: str, pos: Checkpoint, final: bool, budget: int,
                   out: list[Any]) -> Checkpoint:
        """Append what `path` holds after pos.offset to `out` until `budget` is used (`_take`
        gives the form: TailLines here, TailBlocks in batch mode); return the new position.

        One open / seek / read-error path for both modes, so they cannot drift apart: a file that
        cannot be opened is named and left at `pos`; one that stops being readable (a truncated
        .gz, EIO) keeps the complete lines read before the damage (`_unreadable`). `final`: the
        file will not grow, so a last line without newline is a line."""
        try:
            handle = _open(path)
        except OSError as exc:
            log.warning("%s: cannot open %s: %s", self.source, path, exc)
            return pos
        new = replace(pos, header=list(pos.header))
        with handle:
            try:
                handle.seek(new.offset)
            except (OSError, EOFError, zlib.error) as exc:
                return self._unreadable(path, new, exc, final)
            block_bytes = self._block_bytes(budget)
            if block_bytes <= 0:
                return new
            # iter_blocks reads with read1: a gzip reader's read(n) drops what it decompressed in
            # the call that hits a truncated end; read1 hands out each piece as it comes
            for data, exc in zeekbatch.iter_blocks(handle, block_bytes, final=final):
                if exc is not None:
                    return self._unreadable(path, new, exc, final)
                budget = self._take(path, new, data, budget, out)
                if budget <= 0:
                    break   # else read on: a block ends at its last newline, so it may be short,
                    # and poll() takes an unused budget to mean "at the end of the file"
        return new

    def _block_bytes(self, budget: int) -> int:
        """Bytes per block read for a poll with `budget` left (0: read nothing). Line mode: blocks
        of READ_CHUNK, none once the line budget is used up."""
        return READ_CHUNK if budget > 0 else 0

    def _take(self, path: str, pos: Checkpoint, data: bytes, budget: int,
              out: list[Any]) -> int:
        """Line mode: up to `budget` lines of the block `data` into `out` as TailLines, `pos` moved
        past each (offset, line number, '#' header lines); returns the budget left. The block's
        complete lines come first; what follows its last newline is a finished file's last line
        (iter_blocks hands one out only when reading `final`)."""
        parts = data.split(b"\n")
        tail = parts.pop()            # b"" when the block ends with a newline
        for raw in parts:
            if budget <= 0:
                return budget
            text = self._add_line(path, pos, raw, len(raw) + 1, out)
            if text.startswith("#"):
                pos.header = _update_header(pos.header, text)
            budget -= 1
        if tail and budget > 0:
            # not taken into the header: the file is finished, and the header kept in the
            # checkpoint only serves to resume a file part-way
            self._add_line(path, pos, tail, len(tail), out)
            budget -= 1
        return budget

    @staticmethod
    def _add_line(path: str, pos: Checkpoint, raw: bytes, nbytes: int,
                  out: list[Any]) -> str:
        """Count one line of `nbytes` bytes (with its newline, if it has one) in `pos`, append it
        to `out` as a TailLine (a CRLF's CR dropped); return its text for the header check."""
        pos.offset += nbytes
        pos.lineno += 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        out.append(TailLine(path, pos.lineno, text, new_file=pos.lineno == 1))
        return text

    def _unreadable(self, path: str, pos: Checkpoint, exc: BaseException,
                    final: bool) -> Checkpoint:
        """Name a file that stopped being readable mid-way. A rotated (final) file is done: the
        tailer moves on to the live file, so one damaged archive does not stop the source."""
        self.io_errors += 1
        log.warning("%s: stopped reading %s after line %d (offset %d): %s: %s%s", self.source,
                    path, pos.lineno, pos.offset, type(exc).__name__, exc,
                    "; the rest of it is lost" if final else "; will retry")
        return pos

    def _used(self, out: list[Any]) -> int:
        """How much of the poll's budget `out` used (lines here; bytes in batch mode)."""
        return len(out)

    def poll(self, max_lines: int | None = None) -> TailBatch:
        """Read new complete lines (up to max_lines), following rotation and truncation."""
        budget = max_lines or self.max_lines
        lines: list[Any] = []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
            self._warn_missing()
        pos = self.pos
        if pos is None:
            if st is None:
                return TailBatch(self.source, [], None)
            start = st.st_size if self.start_at_end else 0
            pos = self._file_start(st)
            if start:
                self.pos = self._skip_to_end(pos, st.st_size)
                self._on_rewind()  # parsers primed with the header read while skipping
                pos = self.pos
        # 1. The file we were reading was rotated away: drain it first.
        if st is None or (st.st_dev, st.st_ino) != (pos.device, pos.inode):
            old = self._find_inode(pos.device, pos.inode) or self._find_copy(pos)
            if old is not None:
                pos = self._read_from(old, pos, final=st is not None, budget=budget, out=lines)
                budget -= self._used(lines)
                if budget <= 0 or st is None:
                    return self._batch(lines, pos)
            elif pos.offset or pos.lineno:
                self.lost_files += 1
                log.warning("%s: %s was rotated and its old file (inode %d) is gone; lines after "
                            "offset %d of it could not be read", self.source, self.path, pos.inode,
                            pos.offset)
            if st is None:
                return self._batch(lines, pos)
            self.rotations += 1
            log.info("%s: following new file %s (inode %d)", self.source, self.path, st.st_ino)
            pos = self._file_start(st)
        # 2. Same inode: truncated or replaced in place?
        elif st.st_size < pos.offset or not _fingerprint_matches(self.path, pos.fingerprint):
            self.truncations += 1
            copy = self._find_copy(pos)
            if copy is not None:
                # copytruncate (or the inode was reused after delete + compress): the old content
                # lives on in a copy; read its rest first
                pos = self._read_from(copy, pos, final=True, budget=budget, out=lines)
                budget -= self._used(lines)
                if budget <= 0:
                    return self._batch(lines, pos)
            log.warning("%s: %s was truncated or replaced; reading it from the start%s",
                        self.source, self.path, f" (rest of the old content read from {copy})"
                        if copy else "")
            pos = self._file_start(st)
        if budget > 0:
            pos = self._read_from(self.path, pos, final=False, budget=budget, out=lines)
        if not pos.fingerprint or not pos.fingerprint.startswith(f"{FINGERPRINT_BYTES}:"):
            pos.fingerprint = _fingerprint(self.path, min(pos.offset, FINGERPRINT_BYTES)) or pos.fingerprint
        return self._batch(lines, pos)

    def _warn_missing(self) -> None:
        if self.missing == "dir":
            directory = os.path.dirname(self.path) or "."
            if not os.path.isdir(directory):
                MISSING_SOURCES.warn(directory, "source %s: directory %s does not exist; nothing "
                                     "is read from it until it does (said again hourly)",
                                     self.source.split(":")[0], directory)
        elif self.missing == "file":
            MISSING_SOURCES.warn(self.path, "source %s: %s does not exist; nothing is read from it "
                                 "until it does (said again hourly)", self.source, self.path)

    def _file_start(self, st: os.stat_result) -> Checkpoint:
        """The position before the first line of the file `st` describes."""
        return Checkpoint(self.source, self.path, st.st_dev, st.st_ino, 0, 0)

    def _skip_to_end(self, pos: Checkpoint, size: int) -> Checkpoint:
        """start_at_end: count lines and collect the header up to the current end."""
        sink: list[TailLine] = []
        new = self._read_from(self.path, pos, final=False, budget=10**12, out=sink)
        return new

    def _batch(self, lines: list[TailLine], pos: Checkpoint) -> TailBatch:
        """Parse the lines, then move the in-memory position: if parsing failed as a whole, the
        position stays where it was and the lines are read again (nothing silently skipped)."""
        batch = TailBatch(self.source, lines, pos)
        self._parse(batch)
        self.pos = pos
        return batch

    def _parse(self, batch: TailBatch) -> None:
        """Hook for subclasses: fill batch.items (each line through `_parse_one`)."""

    @property
    def skipped(self) -> int:
        """Lines skipped as malformed plus files not readable to their end, since start (the
        daemon's stowaway_bad_lines metric)."""
        stats = getattr(self, "stats", None)
        parsed = (getattr(stats, "malformed", 0) or getattr(stats, "bad_lines", 0)) + \
            getattr(stats, "io_errors", 0) if stats is not None else 0
        return self.bad_lines + self.io_errors + parsed

    def _parse_one(self, line: TailLine, parse: Callable[[str, int], Any]) -> Any:
        """One line through a parser that should never raise; if it does anyway, the line is
        named, counted and skipped: the rest of the batch is still handled."""
        try:
            return parse(line.text, line.lineno)
        except Exception as exc:  # noqa: BLE001 - one bad line must never cost the batch
            self.bad_lines += 1
            self._limiter.warn(line.path, "%s: %s:%d: line skipped: %s: %.120s", self.source,
                               line.path, line.lineno, type(exc).__name__, exc)
            return None

    def lines(self) -> Iterator[TailLine]:
        """Convenience for one-shot reading without checkpoints (tests)."""
        while True:
            batch = self.poll()
            if not batch.lines:
                return
            yield from batch.lines


class ZeekTailer(FileTailer):
    """FileTailer that parses Zeek TSV/JSON lines with scheduler.collect.zeeklog.ZeekLogParser.

    batch.items are (lineno, record dict); the parser is re-created (and primed with the stored
    header) on every file switch and on rewind.
    """

    def __init__(self, path: str | Path, store: StateStore, stream: str | None = None,
                 source: str | None = None, stats: Any = None,
                 fields: Iterable[str] | None = None, **kwargs: Any) -> None:
        from scheduler.collect import zeeklog
        self.fields = fields  # keys to parse (None: all); the daemon asks for the engine's
        self._zeeklog = zeeklog
        self.stream = stream or Path(path).name.split(".")[0]
        self.stats = stats if stats is not None else zeeklog.ParseStats()
        self._parser: Any = None
        self._parser_key: tuple[str, int] | None = None
        kwargs.setdefault("missing", "dir")
        super().__init__(path, store, source=source or f"zeek:{self.stream}", **kwargs)

    def _new_parser(self, path: str, header: list[str]) -> Any:
        parser = self._zeeklog.ZeekLogParser(path, stats=self.stats, fields=self.fields)
        lines_before = self.stats.lines
        headers_before = self.stats.headers
        for h in header:
            parser.parse_line(h, 0)
        # priming is not reading: keep the line counters honest
        self.stats.lines = lines_before
        self.stats.headers = headers_before
        return parser

    def _on_rewind(self) -> None:
        # primed with the checkpoint's header: a restart mid-file still knows the #fields
        self._parser = None
        if self.pos is not None:
            self._parser = self._new_parser(self.pos.path, self.pos.header)

    def _parse(self, batch: TailBatch) -> None:
        for line in batch.lines:
            if line.new_file or self._parser is None:
                # a file read from its first line (new after rotation, or truncated): fresh state
                self._parser = self._new_parser(line.path, [])
            elif self._parser.path != line.path:
                self._parser.path = line.path  # same inode, renamed by rotation: warnings say so
            rec = self._parse_one(line, self._parser.parse_line)
            if rec is not None:
                batch.items.append((line.lineno, rec))


class ZeekBatchTailer(ZeekTailer):
    """ZeekTailer that reads bytes, not lines: each poll reads about `batch_bytes` of complete
    lines after the checkpoint and parses them with `zeekbatch.BlockParser` (pyarrow columns; the
    per-line parser for headers and for any run it cannot vouch for).

    The daemon's API, as for the other tailers: `batch = t.poll()`; `batch.items` is a list of
    `zeekbatch.ZeekBatch` (one per run of data lines between header lines; a poll that crosses a
    rotation gives the old file's rest first); derive what you derive, then in ONE transaction
    store it and `t.commit(batch, conn)`; on failure `t.rewind()`. `len(batch)` is the lines
    consumed; `batch.position` the checkpoint: a byte offset at a line boundary, never inside a
    batch. Rotation, truncation, copytruncate, rotated .gz files, a partial last line (left until
    its newline arrives) and the restart from a checkpoint (parser primed with its header) are
    FileTailer's, unchanged. Malformed lines are counted in `stats` and named as ZeekTailer's are.
    """

    def __init__(self, path: str | Path, store: StateStore, stream: str | None = None,
                 source: str | None = None, stats: Any = None,
                 fields: Iterable[str] | None = None,
                 batch_bytes: int = zeekbatch.DEFAULT_BATCH_BYTES, **kwargs: Any) -> None:
        self.batch_bytes = batch_bytes
        self._bp: zeekbatch.BlockParser | None = None
        kwargs.setdefault("max_lines", batch_bytes)   # the poll budget is in bytes here
        super().__init__(path, store, stream=stream, source=source, stats=stats, fields=fields,
                         **kwargs)

    def _used(self, out: list[Any]) -> int:
        return sum(len(b.data) for b in out)

    def _on_rewind(self) -> None:
        self._parser = None
        self._bp = None
        if self.pos is not None:
            self._bp = self._block_parser(self.pos.path, self.pos.header)

    def _block_parser(self, path: str, header: Iterable[str] = ()) -> zeekbatch.BlockParser:
        return zeekbatch.BlockParser(path, stream=self.stream, fields=self.fields,
                                     stats=self.stats, header=header)

    def _block_bytes(self, budget: int) -> int:
        """Blocks of about the byte budget; at least one line, even when it is used up."""
        return max(1, budget)

    def _take(self, path: str, pos: Checkpoint, data: bytes, budget: int,
              out: list[Any]) -> int:
        """Batch mode: the block `data` (complete lines; a finished file's last may lack its
        newline) into `out` as one TailBlock, `pos` moved past it (offset, line number, '#' header
        lines); returns the byte budget left."""
        lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        out.append(TailBlock(path, pos.lineno + 1, pos.offset, data, lines,
                             new_file=pos.lineno == 0))
        if b"#" in data:
            for text in zeekbatch.header_lines(data):
                pos.header = _update_header(pos.header, text)
        pos.offset += len(data)
        pos.lineno += lines
        return budget - len(data)

    def _skip_to_end(self, pos: Checkpoint, size: int) -> Checkpoint:
        """start_at_end: count lines and collect the header up to the current end, a block at a
        time (nothing kept)."""
        while True:
            new = self._read_from(self.path, pos, final=False, budget=self.batch_bytes, out=[])
            if new.offset == pos.offset:
                return new
            pos = new

    def _batch(self, lines: list[Any], pos: Checkpoint) -> TailBatch:
        batch = TailBatch(self.source, [], pos, blocks=lines)
        self._parse(batch)
        self.pos = pos
        return batch

    def _parse(self, batch: TailBatch) -> None:
        for block in batch.blocks:
            if block.new_file or self._bp is None:
                # a file read from its first line (new after rotation, or truncated): fresh state
                self._bp = self._block_parser(block.path)
            elif self._bp.path != block.path:
                self._bp.rename(block.path)   # same inode, renamed by rotation
            try:
                batch.items.extend(self._bp.parse_block(block.data, block.first_lineno,
                                                        block.offset))
            except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the source
                self.bad_lines += block.lines
                self._limiter.warn(block.path, "%s: %s:%d-%d: block skipped: %s: %.120s",
                                   self.source, block.path, block.first_lineno,
                                   block.first_lineno + block.lines - 1, type(exc).__name__, exc)

    def batches(self) -> Iterator[zeekbatch.ZeekBatch]:
        """Convenience for one-shot reading without checkpoints (tests)."""
        while True:
            batch = self.poll()
            if not len(batch):
                return
            yield from batch.items


class OsqueryTailer(FileTailer):
    """FileTailer for osqueryd.results.log; batch.items are OsqueryRow objects."""

    def __init__(self, path: str | Path, store: StateStore, source: str | None = None,
                 stats: Any = None, **kwargs: Any) -> None:
        from scheduler.collect.osquery_results import OsqueryResultsParser, ParseStats
        self.stats = stats if stats is not None else ParseStats()
        self._make = OsqueryResultsParser
        self._parsers: dict[str, Any] = {}
        super().__init__(path, store, source=source or "osquery:results", **kwargs)

    def _parse(self, batch: TailBatch) -> None:
        for line in batch.lines:
            parser = self._parsers.get(line.path)
            if parser is None:
                parser = self._parsers[line.path] = self._make(line.path, self.stats)
            batch.items.extend(self._parse_one(line, parser.parse_line) or ())


def follow_zeek_dir(directory: str | Path, store: StateStore,
                    streams: Iterable[str] = ("conn", "dns", "http", "ssl", "container_geo"),
                    fields: Callable[[str], Iterable[str] | None] | None = None,
                    batches: bool = False, **kwargs: Any) -> list[ZeekTailer]:
    """One ZeekTailer per stream at `<directory>/<stream>.log` (files may appear later);
    `fields(stream)` names the keys to parse of each stream (None: all). `batches`: a
    ZeekBatchTailer per stream (ZeekBatch columns; `batch_bytes=` may be passed)."""
    cls = ZeekBatchTailer if batches else ZeekTailer
    return [cls(Path(directory) / f"{s}.log", store, stream=s,
                fields=fields(s) if fields is not None else None, **kwargs)
            for s in streams]


def drain(tailer: FileTailer, handler: Callable[[TailBatch, sqlite3.Connection], None],
          max_batches: int | None = None) -> int:
    """Poll until no new lines; each batch is handled and checkpointed in one transaction.

    Returns the number of lines consumed (either mode). On a handler exception the transaction is rolled back,
    the tailer rewound, and the exception re-raised.
    """
    total = 0
    n = 0
    while max_batches is None or n < max_batches:
        batch = tailer.poll()
        try:
            with tailer.store.transaction() as conn:
                if len(batch):
                    handler(batch, conn)
                tailer.commit(batch, conn)
        except BaseException:
            tailer.rewind()
            raise
        total += len(batch)
        n += 1
        if not len(batch):
            break
    return total

"""Append-only SQLite result store: one row per (run configuration, domain), i.e. domain x seed.

Each finished domain is committed in its own ``BEGIN IMMEDIATE`` transaction (WAL
journal, 60 s busy timeout), so a run that dies keeps every finished domain and several
processes can append to one file at once without losing rows. A cell is identified by
``run_key`` (hash of everything that determines the result) and ``domain``; a rerun
skips finished cells unless forced, and a forced rerun appends a newer row (readers
take the latest).

Before computing a cell a process *claims* it (:meth:`ResultStore.claim`): a row in the
``claims`` table with an owner and an expiry, written in the same kind of transaction.
A second process that meets a live claim waits for the row (or skips the cell and comes
back to it) instead of computing it again; the owner renews its claim while it works,
and a killed process's claim lapses after ``CLAIM_TTL_S`` seconds, so its cells are
taken over by the next process. The store then holds one result per cell and seed.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable

from tta.errors import UserError

COLUMNS: dict[str, str] = {
    "run_key": "TEXT NOT NULL",
    "created_at": "TEXT NOT NULL",
    "protocol": "TEXT NOT NULL",
    "dataset": "TEXT",
    "data_source": "TEXT",
    "data_root": "TEXT",
    "data_fingerprint": "TEXT",
    "scenario": "TEXT NOT NULL",
    "method": "TEXT NOT NULL",
    "hparams": "TEXT NOT NULL",
    "seed": "INTEGER NOT NULL",
    "model": "TEXT NOT NULL",
    "checkpoint": "TEXT",
    "checkpoint_sha256": "TEXT",
    "domain": "TEXT NOT NULL",
    "domain_index": "INTEGER",
    "severity": "INTEGER",
    "batch_size": "INTEGER",
    "n": "INTEGER",
    "error": "REAL",
    "nll": "REAL",
    "ece": "REAL",
    "images_per_s": "REAL",
    "method_s": "REAL",
    "wall_s": "REAL",
    "peak_mem_mb": "REAL",
    "version": "TEXT",
    "git_rev": "TEXT",
    "env": "TEXT",
    "extra": "TEXT",
}
JSON_COLUMNS = ("hparams", "env", "extra")
#: seconds a claim lives without renewal; the owner renews it at least every CLAIM_TTL_S / 4
CLAIM_TTL_S = 120.0
#: outcomes of :meth:`ResultStore.claim`
CLAIMED, DONE, BUSY = "claimed", "done", "busy"


def new_owner() -> str:
    """A claim owner id unique to this process and run (host, pid and a random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ResultStore:
    """``ResultStore(path)`` opens (creating or upgrading) a store to write; ``read_only=True``
    opens an existing one to read and changes nothing in it, not even its schema (leaderboards
    read the committed store this way)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise UserError(f"result store {str(self.path)!r} does not exist")
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the result store {str(self.path)!r}: {exc.strerror or exc} "
                            f"(give --store a file in a writable folder)") from None
        if self.path.is_dir():
            raise UserError(f"result store {str(self.path)!r} is a folder; give --store a file path")
        try:
            with closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
                con.execute(f"CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
                con.execute("CREATE INDEX IF NOT EXISTS results_cell ON results (run_key, domain)")
                con.execute("CREATE TABLE IF NOT EXISTS claims (run_key TEXT NOT NULL, domain TEXT NOT NULL, "
                            "owner TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (run_key, domain))")
                present = {row[1] for row in con.execute("PRAGMA table_info(results)")}
                for name, kind in COLUMNS.items():
                    if name not in present:  # stores written by an older tta gain new columns
                        con.execute(f"ALTER TABLE results ADD COLUMN {name} {kind.replace(' NOT NULL', '')}")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"result store {str(self.path)!r} is not a usable SQLite file ({exc})") from None
        except OSError as exc:
            raise UserError(f"cannot write the result store {str(self.path)!r}: {exc.strerror or exc}") from None

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0,
                                   isolation_level=None)
        return sqlite3.connect(self.path, timeout=60.0, isolation_level=None)

    def append(self, row: dict[str, Any]) -> None:
        """Insert one finished cell atomically."""
        values = {k: (json.dumps(row.get(k), sort_keys=True) if k in JSON_COLUMNS else row.get(k)) for k in COLUMNS}
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute(f"INSERT INTO results ({names}) VALUES ({marks})", tuple(values.values()))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def claim(self, run_key: str, domain: str, owner: str, force: bool = False,
              ttl_s: float = CLAIM_TTL_S) -> str:
        """Claim one cell for ``owner``: ``DONE`` (a row is stored and not ``force``), ``BUSY``
        (another owner's claim is live) or ``CLAIMED`` (ours now, or renewed, for ``ttl_s``)."""
        now = time.time()
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if not force and con.execute("SELECT 1 FROM results WHERE run_key = ? AND domain = ? LIMIT 1",
                                             (run_key, domain)).fetchone():
                    outcome = DONE
                else:
                    held = con.execute("SELECT owner, expires FROM claims WHERE run_key = ? AND domain = ?",
                                       (run_key, domain)).fetchone()
                    if held and held[0] != owner and held[1] > now:
                        outcome = BUSY
                    else:
                        con.execute("INSERT OR REPLACE INTO claims (run_key, domain, owner, expires) VALUES (?, ?, ?, ?)",
                                    (run_key, domain, owner, now + ttl_s))
                        outcome = CLAIMED
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return outcome

    def release(self, run_key: str, domain: str, owner: str) -> None:
        """Drop ``owner``'s claim on a cell (after its row is stored, or when giving up)."""
        with closing(self._connect()) as con:
            con.execute("DELETE FROM claims WHERE run_key = ? AND domain = ? AND owner = ?", (run_key, domain, owner))

    def finished(self, run_key: str) -> set[str]:
        """Domains already stored for ``run_key``."""
        with closing(self._connect()) as con:
            return {d for (d,) in con.execute("SELECT DISTINCT domain FROM results WHERE run_key = ?", (run_key,))}

    def rows(self, latest_only: bool = True) -> list[dict[str, Any]]:
        """All rows (the newest per cell when ``latest_only``), JSON columns decoded."""
        query = "SELECT * FROM results"
        if latest_only:
            query += " WHERE id IN (SELECT MAX(id) FROM results GROUP BY run_key, domain)"
        try:
            with closing(self._connect()) as con:
                con.row_factory = sqlite3.Row
                out = [dict(r) for r in con.execute(query + " ORDER BY id")]
        except sqlite3.DatabaseError as exc:
            raise UserError(f"result store {str(self.path)!r} is not a readable result store ({exc})") from None
        for row in out:
            for key in COLUMNS:  # a store written by an older tta lacks the newer columns
                row.setdefault(key, None)
            for key in JSON_COLUMNS:
                if row.get(key) is not None:
                    row[key] = json.loads(row[key])
        return out

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.append(row)

"""``nvr verify``: check the whole archive (integrity.verify_archive) and name every problem.

A progress bar on stderr while segments are re-hashed (only when stderr is a terminal, and not with
``--no-progress``), then one line per problem ``KIND  camera  time  subject: detail`` and a summary with the
segments and bytes checked and the hashing speed. Exit 0 when the archive is intact, 1 when anything is wrong.
Read-only unless ``--record``: then the problems become integrity findings (which raise the ``integrity_mismatch``
alarm; findings it no longer sees are marked intact again, never resolved: a person resolves them with a note)
and one ``integrity.verify`` audit event records the counts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime


@app.command("verify")
def verify(
    as_json: JsonOpt = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar on stderr.")] = False,
    record: Annotated[
        bool, typer.Option("--record", help="Store the problems as integrity findings and audit the check.")
    ] = False,
    without_master_key: Annotated[
        bool,
        typer.Option(
            "--without-master-key",
            help="Check encrypted segments' stored bytes only (an auditor without the master keys); by default they "
            "are also decrypted and a segment no master key opens is a finding.",
        ),
    ] = False,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            help="A copy of the checkpoint chain kept earlier ('nvr checkpoints export' or GET /api/v1/checkpoints); "
            "may be given more than once.",
        ),
    ] = None,
) -> None:
    """Re-hash every segment, recompute every chain across tombstones, check every checkpoint (pinned keys, the
    chain, the heads each names, witness copies), tombstones, registry records and the audit log; list each problem
    by its kind (docs/integrity/verify.md)."""
    from integrity import audit_log
    from integrity.verify_archive import record_findings, total_bytes, verify_archive
    from storage.keyring import Keyring
    from storage.segment_io import plain_checker

    rt = runtime(migrate=False)
    check = None if without_master_key else plain_checker(Keyring(rt.settings.master_keys_dir))
    copies = list(against or [])
    for c in copies:
        if not c.is_file():
            _fail(f"--against {c}: no such file")
    show = not no_progress and sys.stderr.isatty()
    if show:
        report = _with_progress(rt.db, rt.settings, copies, verify_archive, total_bytes, check)
    else:
        report = verify_archive(rt.db, rt.settings, against=copies, plain_check=check)
    data = report.as_dict()
    if record:
        now = rt.clock.now_us()
        with rt.db.session() as s:
            new, intact = record_findings(s, report.problems, now)
            counts = ",".join(f"{k}={n}" for k, n in report.counts.items() if n) or "none"
            audit_log.record(
                s,
                now,
                cli_actor(),
                audit_log.CLI,
                audit_log.Event(
                    "integrity.verify",
                    "ok" if report.ok else "failed",
                    reason=f"segments={report.segments} bytes={report.bytes} problems={len(report.problems)} "
                    f"({counts}); findings new={new} intact_again={intact}",
                    bytes=report.bytes,
                ),
            )
        data["recorded"] = {"new": new, "intact_again": intact}
    emit(data, as_json, human(data))
    if not report.ok:
        raise typer.Exit(1)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _with_progress(
    db: Any, settings: Any, copies: list[Path], verify_archive: Any, total_bytes: Any, check: Any
) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    n, total = total_bytes(db)
    columns = (
        TextColumn("verifying"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[segments]}/" + str(n) + " segments"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("verify", total=total or None, segments=0)

        def progress(segments: int, done: int) -> None:
            bar.update(task, completed=done, segments=segments)

        return verify_archive(db, settings, progress=progress, against=copies, plain_check=check)


def human(data: dict[str, Any]) -> str:
    from nvr.clock import iso

    lines = []
    for p in data["problems"]:
        lines.append(
            f"{p['kind']:<14} {p['camera_id'] or '-':<16} {iso(p['at_us']) or '-':<27} {p['subject']}: {p['detail']}"
        )
    verdict = "archive intact" if data["ok"] else f"{len(data['problems'])} problem(s)"
    counts = ", ".join(f"{k} {n}" for k, n in data["counts"].items() if n)
    lines.append(
        f"{verdict}{': ' + counts if counts else ''} — {data['segments']} segment(s), {data['bytes'] / 1e9:.3f} GB "
        f"re-hashed in {data['seconds']:.1f} s ({data['gb_per_second']:.2f} GB/s); {data['rows']} row(s) chained, "
        f"{data['files']} file(s), {data['checkpoints']} checkpoint(s), {data['audit_events']} audit event(s)"
    )
    if data.get("encrypted"):
        unchecked = data.get("plaintext_unchecked")
        lines.append(
            f"encrypted at rest: {data['encrypted']} segment(s); plaintext checked for {data['plaintext_checked']}"
            + (f" (not for the others: {unchecked})" if unchecked else "")
        )
    if "recorded" in data:
        rec = data["recorded"]
        lines.append(
            f"findings: {rec['new']} new, {rec['intact_again']} intact again "
            "(open until resolved: nvr integrity resolve ID --note ...)"
        )
    return "\n".join(lines)

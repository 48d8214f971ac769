"""``nvr checkpoints list|export|sign``: the signed checkpoint chain, and witness copies of it for auditors.

``export`` writes JSON lines: first the pinned key log (``{"key_record": ...}``), then every checkpoint with its
body and signature (``{"checkpoint": ...}``), oldest first. Kept somewhere the server's operators cannot write, such
a copy lets ``nvr verify --against FILE`` catch a later rewrite of the archive or the audit log, even one signed
with the server's own key file (docs/integrity/threat-model.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, emit, runtime
from nvr.clock import iso

checkpoints_app = typer.Typer(
    no_args_is_help=True,
    help="The signed checkpoint chain: list it, export a witness copy for an auditor, sign one now.",
)
app.add_typer(checkpoints_app, name="checkpoints")


def export_lines(rt: Any, after_seq: int = 0) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from integrity import keylog, witness
    from nvr.models import Checkpoint

    out: list[dict[str, Any]] = [{"key_record": r} for r in keylog.read_lines(rt.settings.keys_dir)]
    with rt.db.session() as s:
        rows = s.scalars(
            select(Checkpoint).where(Checkpoint.seq.is_not(None), Checkpoint.seq > after_seq).order_by(Checkpoint.seq)
        )
        out += [{"checkpoint": witness.entry(r)} for r in rows]
    return out


@checkpoints_app.command("export")
def checkpoints_export(
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of standard output.")] = None,
    after_seq: Annotated[int, typer.Option("--after-seq", min=0, help="Only checkpoints after this seq.")] = 0,
) -> None:
    """The key log and the signed checkpoint chain as JSON lines, for an auditor to keep (see 'nvr verify
    --against')."""
    rt = runtime(migrate=False)
    lines = export_lines(rt, after_seq)
    text = "".join(json.dumps(x, sort_keys=True, separators=(",", ":")) + "\n" for x in lines)
    n = sum(1 for x in lines if "checkpoint" in x)
    if out is None:
        sys.stdout.write(text)
    else:
        if out.exists():
            typer.echo(f"error: {out} exists; refusing to overwrite a witness copy", err=True)
            raise typer.Exit(2)
        out.write_text(text, encoding="utf-8")
    typer.echo(f"exported {n} checkpoint(s)" + (f" to {out}" if out else ""), err=True)


@checkpoints_app.command("list")
def checkpoints_list(
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest this many.")] = 20,
) -> None:
    """The newest checkpoints: seq, time, key, and whether the key is pinned."""
    from sqlalchemy import select

    from integrity import keys
    from nvr.models import Checkpoint

    rt = runtime(migrate=False)
    with rt.db.session() as s:
        trusted = keys.trusted_keys(s, rt.settings)
        rows = list(s.scalars(select(Checkpoint).order_by(Checkpoint.seq.desc()).limit(limit)))
    data = [
        {
            "seq": r.seq,
            "id": r.id,
            "created": iso(r.created_us),
            "key_id": r.key_id,
            "pinned_key": r.key_id in trusted,
            "hash": r.hash,
        }
        for r in reversed(rows)
    ]
    human = "\n".join(
        f"{d['seq']:>8}  {d['created']}  key {d['key_id']}{'' if d['pinned_key'] else ' (NOT PINNED)'}  {d['hash']}"
        for d in data
    )
    emit(data, as_json, human or "no checkpoint yet")


@checkpoints_app.command("sign")
def checkpoints_sign(as_json: JsonOpt = False) -> None:
    """Sign a checkpoint now (the server signs one at start and then on its schedule)."""
    from integrity import checkpoints

    rt = runtime()
    row = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock, now_us=rt.trusted.checkpoint_time_us())
    emit({"seq": row.seq, "id": row.id, "created": iso(row.created_us)}, as_json, f"checkpoint seq {row.seq} signed")

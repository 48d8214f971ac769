"""``nvr integrity findings|resolve``: the open integrity findings behind the ``integrity_mismatch`` alarm, and
resolving one — by a person, with a note, audited (integrity.findings)."""

from __future__ import annotations

from typing import Annotated

import typer

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime
from nvr.clock import iso

integrity_app = typer.Typer(
    no_args_is_help=True,
    help="Integrity findings: list the open ones, resolve one with a note (never done by an automatic check).",
)
app.add_typer(integrity_app, name="integrity")


@integrity_app.command("findings")
def findings_list(as_json: JsonOpt = False) -> None:
    """The open findings, oldest first: kind, camera, footage time, subject, and whether a later check found the
    subject intact again."""
    from integrity.findings import view
    from integrity.verify_archive import open_findings

    rt = runtime(migrate=False)
    with rt.db.session() as s:
        rows = [view(f) for f in open_findings(s)]
    human = "\n".join(
        f"{r['id']:>6}  {r['kind']:<22} {r['camera_id'] or '-':<16} {r['subject']}: {r['detail']}"
        + (f"  [intact again {r['intact_again']}]" if r["intact_again"] else "")
        for r in rows
    )
    emit({"findings": rows}, as_json, human or "no open finding")


@integrity_app.command("resolve")
def findings_resolve(
    finding_id: Annotated[int, typer.Argument(help="The finding's id (nvr integrity findings).")],
    note: Annotated[str, typer.Option("--note", help="What was found and done (required; audited).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Resolve one finding with a note; one integrity.finding.resolve audit event records who and why."""
    from integrity import audit_log, findings

    rt = runtime(migrate=False)
    with rt.db.session() as s:
        f = findings.resolve(s, finding_id, note, actor=cli_actor(), meta=audit_log.CLI, now_us=rt.clock.now_us())
        data = {"id": f.id, "kind": f.kind, "subject": f.subject, "resolved": iso(f.resolved_us), "by": f.resolved_by}
    emit(data, as_json, f"finding {data['id']} ({data['kind']} {data['subject']}) resolved")

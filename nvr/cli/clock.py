"""``nvr clock status|confirm``: the trusted time retention decides by (integrity.trusted_time).

``status`` shows the wall clock, the trusted time (the newest signed checkpoint plus the monotonic time since this
command read it), how far the wall clock is ahead and the anchor; it exits 1 while the clock is untrusted.
``confirm --reason`` is the audited resolution after a real outage longer than the tolerance: it records
``clock.confirm`` as the CLI user and signs a checkpoint at the wall clock, which every process then takes as its
anchor. Never confirm a clock you have not checked against an outside reference: footage the jump made look old
becomes deletable.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime

clock_app = typer.Typer(
    no_args_is_help=True,
    help="The trusted time retention decides by: the newest signed checkpoint plus the time that passed since. "
    "A wall clock ahead of it beyond clock_tolerance_minutes raises clock_untrusted and nothing is deleted.",
)
app.add_typer(clock_app, name="clock")


def _human(st: Any) -> str:
    from integrity.trusted_time import span
    from nvr.clock import iso

    if st.anchor == "checkpoint":
        anchor = f"checkpoint {st.checkpoint_id} (seq {st.checkpoint_seq}) signed at {iso(st.anchor_us)}"
    elif st.anchor == "database":
        anchor = f"the newest database rows, {iso(st.anchor_us)} (no signed checkpoint)"
    else:
        anchor = "nothing witnessed yet"
    direction = "ahead" if st.ahead_us >= 0 else "behind"
    lines = [
        f"wall clock    {iso(st.wall_us)}",
        f"trusted time  {iso(st.bound_us)}",
        f"wall clock is {span(st.ahead_us)} {direction} (tolerance {span(st.tolerance_us)})",
        f"anchor        {anchor}",
    ]
    if st.detail:
        lines.append(f"note          {st.detail}")
    if st.trusted:
        lines.append("state         trusted: retention decides by min(wall clock, trusted time + tolerance)")
    else:
        lines.append(
            "state         CLOCK_UNTRUSTED: retention deletes nothing. Fix the wall clock, or, after a real outage "
            "longer than the tolerance, check it against an outside reference and run "
            "'nvr clock confirm --reason ...'"
        )
    return "\n".join(lines)


@clock_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """Wall clock, trusted time, how far ahead, the anchor; exit 1 while the clock is untrusted."""
    from sqlalchemy import select

    from integrity.trusted_time import META_KEY
    from nvr.models import Meta

    rt = runtime()
    trusted = rt.trusted
    trusted.refresh()
    st = trusted.status()
    with rt.db.session() as s:
        recorded = s.scalar(select(Meta.value).where(Meta.key == META_KEY))
    data = {**st.as_dict(), "outage_recorded": recorded is not None}
    emit(data, as_json, _human(st))
    if not st.trusted:
        raise typer.Exit(1)


@clock_app.command("confirm")
def confirm(
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason", help="Why the wall clock is right (the outage, the reference it was checked against)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """State, audited as you, that the wall clock is right after a real outage: signs a checkpoint at the wall
    clock, which becomes the trusted time's anchor. Refused without --reason."""
    from integrity import audit_log, trusted_time

    rt = runtime()
    done = trusted_time.confirm(rt.db, rt.settings, rt.clock, reason or "", actor=cli_actor(), meta=audit_log.CLI)
    data = {
        "before": done.before.as_dict(),
        "after": done.after.as_dict(),
        "checkpoint_id": done.checkpoint_id,
        "checkpoint_seq": done.checkpoint_seq,
        "audit_seq": done.audit_seq,
    }
    human = (
        f"confirmed (audit event {done.audit_seq}); checkpoint {done.checkpoint_id} signed at the wall clock is the "
        f"new anchor\nbefore: {done.before.message()}\nafter:  {done.after.message()}"
    )
    emit(data, as_json, human)

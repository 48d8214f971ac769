"""``nvr verify-export BUNDLE --trusted-key FINGERPRINT [--key PRIVATE.pem] [--json]``: check an export bundle offline.

An encrypted copy (``.zip.nvrenc``, docs/exports/encrypted-copies.md) is decrypted with ``--key`` into a temporary
folder first (nvr.cli.decrypt_export); without ``--key``, or when it does not open, the result is ``unreadable``
with the envelope's error code.

Needs no server, database, data folder or settings: only the bundle and the fingerprint of the server's key,
obtained through a trusted channel (``nvr keys list`` on the server). Prints ``valid``, ``invalid``, ``unsigned`` or
``unreadable`` on the first line, then ``FAILED <check>: <detail>`` for each failed check; for a valid bundle a short
summary (cameras, window, case, key, checkpoints). ``--json`` prints the whole report.

Exit status: 0 valid, 1 invalid, 2 unsigned, 3 unreadable, 4 bad usage (no such file, a malformed fingerprint,
a missing or unknown option). Click reports usage errors with status 2, which would read as "unsigned", so this
command's usage errors are given status 4 (the command class below) and its arguments are checked here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand

try:  # typer >= 0.20 parses with its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError

    _USAGE_ERRORS: tuple[type[click.UsageError | _TyperUsageError], ...] = (click.UsageError, _TyperUsageError)
except ImportError:  # pragma: no cover - older typer
    _USAGE_ERRORS = (click.UsageError,)

from nvr.cli.common import app

EXIT = {"valid": 0, "invalid": 1, "unsigned": 2, "unreadable": 3}
EXIT_USAGE = 4


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: usage: {message}", err=True)
    typer.echo("usage: nvr verify-export BUNDLE --trusted-key FINGERPRINT [--key PRIVATE.pem] [--json]", err=True)
    return typer.Exit(EXIT_USAGE)


class _VerifyExportCommand(TyperCommand):
    """Usage errors of this command exit 4, not click's 2 (which means "unsigned" here)."""

    # The type: ignores: TyperCommand is typed against typer's vendored copy of click, whose Context is not click's.
    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):  # type: ignore[override]
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[arg-type]
        except _USAGE_ERRORS as exc:
            raise _usage(exc.format_message()) from None


def _human(report: Any) -> str:
    lines = [report.result]
    lines += [f"FAILED {c.name}: {c.detail}" for c in report.failed]
    if report.result == "valid":
        s = report.summary
        window = s.get("window") or {}
        lines += [
            f"cameras:     {', '.join(s.get('cameras') or []) or '-'}",
            f"window:      {window.get('start')} .. {window.get('end')}",
            f"case:        {s.get('case_ref') or '-'}",
            f"signed by:   key {s.get('key_id')} (fingerprint {s.get('fingerprint')}), suite {s.get('suite') or '-'}",
            f"checkpoints: {', '.join(str(c) for c in s.get('checkpoints') or []) or '-'}",
            f"checks:      {len(report.checks)} passed",
        ]
    return "\n".join(lines)


@app.command("verify-export", cls=_VerifyExportCommand)
def verify_export(
    bundle: Annotated[Path | None, typer.Argument(help="The bundle (.zip) to check.", show_default=False)] = None,
    trusted_key: Annotated[
        str | None,
        typer.Option(
            "--trusted-key",
            help="Fingerprint of the server's key (64 hex digits, from a trusted channel, e.g. 'nvr keys list').",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="For an encrypted copy (.nvrenc): the recipient's private key.", show_default=False),
    ] = None,
) -> None:
    """Check an export bundle offline: signature, trusted key, every file's hash, the originals' chain up to a
    signed checkpoint. Exit 0 valid, 1 invalid, 2 unsigned, 3 unreadable, 4 bad usage."""
    from integrity.bundle_verify import verify_bundle
    from integrity.signing import normalise_fingerprint
    from nvr.errors import NvrError

    if bundle is None:
        raise _usage("name the bundle to check")
    if not trusted_key:
        raise _usage("--trusted-key FINGERPRINT is required (the server's key fingerprint, from a trusted channel)")
    try:
        fingerprint = normalise_fingerprint(trusted_key)
    except NvrError as exc:
        raise _usage(f"--trusted-key: {exc.message}") from None
    if not bundle.is_file():
        raise _usage(f"{bundle}: no such file")
    from nvr.cli.decrypt_export import ENVELOPE_CODES, opened_for_verify  # an encrypted copy: decrypted first

    try:
        with opened_for_verify(bundle, key) as plain:
            report = verify_bundle(plain, fingerprint)
    except NvrError as exc:
        if exc.code not in ENVELOPE_CODES:
            raise
        if as_json:
            typer.echo(json.dumps({"bundle": str(bundle), "result": "unreadable", "error": exc.code}, indent=2))
        else:
            typer.echo(f"unreadable\nFAILED envelope: {exc.code}: {exc.message}")
        raise typer.Exit(EXIT["unreadable"]) from None
    if as_json:
        typer.echo(json.dumps({"bundle": str(bundle), **report.as_dict()}, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(_human(report))
    raise typer.Exit(EXIT[report.result])

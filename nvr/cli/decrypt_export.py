"""``nvr decrypt-export ENVELOPE --key PRIVATE.pem [-o OUT.zip]``: open an encrypted export copy offline.

An export requested with a recipient public key is served as an envelope (``export-….zip.nvrenc``,
integrity.envelope); only the matching private key opens it. Like ``nvr verify-export``, this needs no server,
database, data folder or settings. The ZIP is written only once every part of the envelope authenticated: a failure
leaves no output file, never partly decrypted footage. Then check the ZIP with ``nvr verify-export`` (which also
takes the envelope with ``--key`` and does both steps).

``nvr decrypt-export --new-key recipient.pem --type x25519|sm2`` makes a recipient key pair instead: the private
key (mode 0600) at the path given, the public key beside it as ``recipient.pub.pem`` (the PEM to paste into the
export request) and its fingerprint on stdout. ``openssl genpkey -algorithm X25519`` / ``-algorithm SM2`` makes the
same keys (docs/exports/encrypted-copies.md).

Exit status: 0 done, 1 the envelope is damaged (``envelope_invalid``, ``envelope_truncated``,
``ciphertext_invalid``), 2 the key does not fit (``envelope_wrong_recipient``, ``envelope_suite_mismatch``,
``recipient_key_invalid``), 4 bad usage (no such file, the output exists, a missing or unknown option). Errors print
``error: <code>: <message>`` on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand

from nvr.cli.common import app
from nvr.errors import Kind, NvrError

try:  # typer >= 0.20 parses with its own copy of click (as in nvr/cli/verify_export.py)
    from typer._click.exceptions import UsageError as _TyperUsageError

    _USAGE_ERRORS: tuple[type[Any], ...] = (click.UsageError, _TyperUsageError)
except ImportError:  # pragma: no cover - older typer
    _USAGE_ERRORS = (click.UsageError,)

ENVELOPE_CODES = frozenset(
    {
        "envelope_needs_key",
        "envelope_invalid",
        "envelope_truncated",
        "envelope_suite_mismatch",
        "envelope_wrong_recipient",
        "ciphertext_invalid",
        "recipient_key_invalid",
    }
)
"""What opening an envelope may fail with (``nvr verify-export`` reports these as ``unreadable``)."""
EXIT_DAMAGED = 1
EXIT_KEY = 2
EXIT_USAGE = 4
USAGE = (
    "usage: nvr decrypt-export ENVELOPE --key PRIVATE.pem [-o OUT.zip] [--passphrase-stdin]\n"
    "       nvr decrypt-export --new-key PRIVATE.pem --type x25519|sm2"
)


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: usage: {message}", err=True)
    typer.echo(USAGE, err=True)
    return typer.Exit(EXIT_USAGE)


class _DecryptExportCommand(TyperCommand):
    """Usage errors exit 4, not click's 2 (which means "the key does not fit" here)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):  # type: ignore[override]
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[arg-type]
        except _USAGE_ERRORS as exc:
            raise _usage(exc.format_message()) from None


def exit_code(exc: NvrError) -> int:
    """1 for a damaged envelope, 2 for a key that does not fit, 4 for usage (an output that exists)."""
    if exc.kind == Kind.DATA_LOSS:
        return EXIT_DAMAGED
    if exc.kind == Kind.CONFLICT:
        return EXIT_USAGE
    return EXIT_KEY


def _fail(exc: NvrError) -> typer.Exit:
    typer.echo(f"error: {exc.code}: {exc.message}", err=True)
    return typer.Exit(exit_code(exc))


def read_private_key(path: Path, passphrase_stdin: bool) -> Any:
    """Load the recipient's private key file (passphrase from stdin when asked); NvrError ``recipient_key_invalid``."""
    from integrity import envelope

    try:
        data = path.read_bytes()[: envelope.MAX_PEM + 1]
    except OSError as exc:
        raise NvrError(Kind.INVALID_ARGUMENT, "recipient_key_invalid", f"{path}: {exc.strerror}") from None
    if passphrase_stdin:
        return envelope.load_private_key_with_passphrase(data, sys.stdin.readline().rstrip("\n").encode())
    return envelope.load_private_key(data)


@contextlib.contextmanager
def opened_for_verify(bundle: Path, key: Path | None, passphrase_stdin: bool = False) -> Iterator[Path]:
    """For ``nvr verify-export``: the bundle itself when it is a plain ZIP; an envelope decrypted with ``key`` into
    a private temporary folder (removed afterwards). NvrError when it is an envelope and no key, or the wrong one,
    is given, or it does not decrypt."""
    from integrity import envelope

    if not envelope.is_envelope(bundle):
        yield bundle
        return
    if key is None:
        h = envelope.read_header(bundle)
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "envelope_needs_key",
            f"{bundle.name} is an encrypted export copy (to the {h.key_type} key {h.fingerprint}); give the "
            "recipient's private key with --key PRIVATE.pem, or run 'nvr decrypt-export' first",
        )
    private = read_private_key(key, passphrase_stdin)
    with tempfile.TemporaryDirectory(prefix="nvr-verify-") as tmp:
        out = Path(tmp) / (bundle.name.removesuffix(envelope.SUFFIX) or "bundle.zip")
        envelope.open_envelope(bundle, out, private)
        yield out


def _new_key(path: Path, key_type: str | None) -> None:
    from integrity import envelope

    if key_type not in envelope.KEY_TYPES:
        raise _usage(f"--type must be one of {', '.join(envelope.KEY_TYPES)}")
    public_path = path.with_name(path.name.removesuffix(".pem") + ".pub.pem")
    for p in (path, public_path):
        if p.exists():
            raise _usage(f"{p} exists already; name another file")
    private, public = envelope.generate_key_pair(key_type)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_text(public)
    fp = envelope.parse_recipient(public).fingerprint
    typer.echo(f"private key: {path} (keep it secret; it opens every export encrypted to it)")
    typer.echo(f"public key:  {public_path} (paste it into the export request)")
    typer.echo(f"type:        {key_type}")
    typer.echo(f"fingerprint: {fp}")


@app.command("decrypt-export", cls=_DecryptExportCommand)
def decrypt_export(
    envelope_path: Annotated[
        Path | None, typer.Argument(metavar="ENVELOPE", help="The envelope (.zip.nvrenc).", show_default=False)
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="The recipient's private key (PEM).", show_default=False)
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Where to write the ZIP (default: ENVELOPE without .nvrenc).", show_default=False
        ),
    ] = None,
    passphrase_stdin: Annotated[
        bool, typer.Option("--passphrase-stdin", help="Read the private key's passphrase from stdin.")
    ] = False,
    new_key: Annotated[
        Path | None,
        typer.Option(
            "--new-key",
            help="Make a recipient key pair: the private key here, the public beside it.",
            show_default=False,
        ),
    ] = None,
    key_type: Annotated[
        str | None, typer.Option("--type", help="With --new-key: x25519 or sm2.", show_default=False)
    ] = None,
) -> None:
    """Decrypt an encrypted export copy offline with the recipient's private key (then: nvr verify-export). Exit 0
    done, 1 damaged envelope, 2 wrong key, 4 bad usage."""
    from integrity import envelope

    if new_key is not None:
        if envelope_path is not None or key is not None:
            raise _usage("--new-key makes a key pair; it takes no ENVELOPE or --key")
        _new_key(new_key, key_type)
        return
    if envelope_path is None:
        raise _usage("name the envelope to decrypt")
    if key is None:
        raise _usage("--key PRIVATE.pem is required (the recipient's private key)")
    if not envelope_path.is_file():
        raise _usage(f"{envelope_path}: no such file")
    if not key.is_file():
        raise _usage(f"{key}: no such file")
    if output is None:
        name = envelope_path.name
        output = envelope_path.with_name(
            name.removesuffix(envelope.SUFFIX) if name.endswith(envelope.SUFFIX) else name + ".zip"
        )
    if output.exists():
        raise _usage(f"{output} exists already; name another output with -o")
    try:
        private = read_private_key(key, passphrase_stdin)
        opened = envelope.open_envelope(envelope_path, output, private)
    except NvrError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        typer.echo(f"error: io_error: {exc.strerror}: {exc.filename or envelope_path}", err=True)
        raise typer.Exit(EXIT_DAMAGED) from None
    typer.echo(f"decrypted:   {opened.path} ({opened.bytes} bytes)")
    typer.echo(f"recipient:   {opened.key_type} key {opened.fingerprint}")
    typer.echo(f"next:        nvr verify-export {opened.path} --trusted-key <the server's key fingerprint>")

"""``nvr keys list|rotate|export-public|master rotate``: the server's signing keys (integrity.keys) and the master
keys of encryption at rest (storage.keyring).

Private keys never leave the keys folder through these commands: ``export-public`` writes the public key (PEM) and
its fingerprint, which is what a recipient of an export bundle compares (``nvr verify-export --trusted-key FP``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime
from nvr.clock import iso

keys_app = typer.Typer(
    no_args_is_help=True,
    help="Signing keys: list them, rotate the active one, export a public key. The server signs checkpoints and "
    "export bundles with the active key; retired keys' public halves stay so what they signed still verifies.",
)
app.add_typer(keys_app, name="keys")

SuiteOpt = Annotated[
    str | None,
    typer.Option(
        "--suite",
        help="Crypto suite of the new key: ed25519-sha256 or sm2-sm3 (default: the crypto_suite setting).",
    ),
]


def chosen_suite(suite: str | None, settings: Any) -> str:
    """``--suite`` when given, else the ``crypto_suite`` setting; ``suite_unknown`` for another name."""
    from integrity import suites

    return suites.get(suite if suite is not None else settings.crypto_suite).name


def _row(k: Any) -> dict[str, Any]:
    from integrity.signing import format_fingerprint

    return {
        "key_id": k.key_id,
        "suite": k.suite,
        "purpose": "signing",
        "fingerprint": k.fingerprint,
        "fingerprint_groups": format_fingerprint(k.fingerprint),
        "created": iso(k.created_us),
        "retired": iso(k.retired_us),
        "active": k.retired_us is None,
    }


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Every signing key the server has used, oldest first; the active one is marked with '*'."""
    from integrity import keys

    rt = runtime()
    with rt.db.session() as s:
        pinned = keys.pinned(s, rt.settings)
        rows = [_row(k) for k in keys.public_keys(s)]
    for r in rows:
        r["pinned"] = r["key_id"] in pinned.keys
        if not r["pinned"]:
            r["not_pinned_why"] = pinned.untrusted.get(r["key_id"], "not in the key log")
    masters, master_problems = master_rows(rt.settings.master_keys_dir)
    if not rows:
        human = "no signing key yet: 'nvr init' (or 'nvr keys rotate') creates one"
    else:
        lines = []
        for r in rows:
            mark = "*" if r["active"] else " "
            state = "active" if r["active"] else f"retired {r['retired']}"
            pin = "pinned" if r["pinned"] else f"NOT PINNED ({r['not_pinned_why']})"
            lines += [
                f"{mark} {r['key_id']}  {r['suite']}  {r['purpose']}  created {r['created']}  {state}  {pin}",
                f"    fingerprint {r['fingerprint']}",
                f"                {r['fingerprint_groups']}",
            ]
        human = "\n".join(lines)
    for m in masters:
        mark = "*" if m["active"] else " "
        human += f"\n{mark} {m['key_id']}  any suite  master  created {m['created']}  {m['state']}  {m['file']}"
    if pinned.problems:
        human += "\nkey log problems:\n" + "\n".join(f"  {p}" for p in pinned.problems)
    if master_problems:
        human += "\nmaster key problems:\n" + "\n".join(f"  {p}" for p in master_problems)
    emit(
        {"keys": rows + masters, "key_log_problems": pinned.problems, "master_key_problems": master_problems},
        as_json,
        human,
    )


@keys_app.command("rotate")
def keys_rotate(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    suite: SuiteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retire the active signing key and make a new one (the first one, if there is none). Bundles and checkpoints
    signed with the old key still verify; its private key file is deleted. The new key is in --suite or else the
    crypto_suite setting, so changing that setting and rotating switches the suite. Recipients who pinned the old
    fingerprint need the new one for bundles made from now on."""
    from integrity import audit_log, keys

    rt = runtime()
    new_suite = chosen_suite(suite, rt.settings)
    with rt.db.session() as s:
        current = keys.active_key(s)
    if not yes:
        what = (
            f"retire signing key {current.key_id} ({current.suite}) and make a new {new_suite} one"
            if current
            else f"make the first signing key ({new_suite})"
        )
        if not typer.confirm(f"{what}?"):
            typer.echo("nothing changed", err=True)
            raise typer.Exit(1)
    actor, kd, now = cli_actor(), rt.settings.keys_dir, rt.clock.now_us()
    retired = None
    with rt.db.session() as s:
        if keys.active_key(s) is None:
            new = keys.ensure_key(s, kd, now, new_suite, actor=actor, meta=audit_log.CLI)
        else:
            retired, new = keys.rotate(s, kd, now, new_suite, actor=actor, meta=audit_log.CLI)
    with rt.db.session() as s:
        keys.purge_retired(s, kd)
    active = _row(new)
    data = {"retired": _row(retired) if retired else None, "active": active}
    lines = [f"retired {retired.key_id}" if retired else "created the first signing key"]
    lines += [f"active key {new.key_id} ({new.suite})", f"fingerprint {active['fingerprint']}"]
    lines.append(f"            {active['fingerprint_groups']}")
    emit(data, as_json, "\n".join(lines))


@keys_app.command("export-public")
def keys_export_public(
    key_id: Annotated[str | None, typer.Argument(help="Key id (default: the active key).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the PEM to this file.")] = None,
) -> None:
    """Print the public key (PEM) of the active or given key, or write it to --out; its fingerprint goes to
    stderr. Give the fingerprint to bundle recipients through a second channel (phone, letter)."""
    from integrity import keys
    from integrity.signing import format_fingerprint
    from nvr.errors import Kind, NvrError

    rt = runtime()
    with rt.db.session() as s:
        if key_id is None:
            row = keys.active_key(s)
            if row is None:
                raise NvrError(
                    Kind.FAILED_PRECONDITION, "signing_key_missing", "no signing key yet: run 'nvr init' first"
                )
        else:
            row = keys.get_key(s, key_id)
    pem = row.public_key_pem if row.public_key_pem.endswith("\n") else row.public_key_pem + "\n"
    if out is None:
        sys.stdout.write(pem)
        sys.stdout.flush()
    else:
        out.write_text(pem, encoding="ascii")
    where = f" written to {out}" if out else ""
    state = "active" if row.retired_us is None else f"retired {iso(row.retired_us)}"
    typer.echo(f"key {row.key_id} ({row.suite}, {state}){where}", err=True)
    typer.echo(f"fingerprint {row.fingerprint}", err=True)
    typer.echo(f"            {format_fingerprint(row.fingerprint)}", err=True)


master_app = typer.Typer(
    no_args_is_help=True,
    help="Master keys of encryption at rest (in master_key_dir): each encrypted segment's own data key is wrapped "
    "by one. Back the folder up apart from the footage: without its keys encrypted footage cannot be decrypted.",
)
keys_app.add_typer(master_app, name="master")


def master_rows(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The master keys for ``nvr keys list``: (rows, problems reading the folder)."""
    from storage.keyring import Keyring, KeyringError

    ring = Keyring(folder)
    try:
        found = ring.master_keys()
        retired = ring.retired_keys()
    except KeyringError as exc:
        return [], [f"{exc.code}: {exc.message}"]
    rows = []
    for state, where, keys_ in (("retired", ring.retired_folder, retired), ("", folder, found)):
        for i, k in enumerate(keys_):
            file = where / f"{k.key_id}.key"
            rows.append(
                {
                    "key_id": k.key_id,
                    "suite": "any",
                    "purpose": "master",
                    "ciphers": ["aes-256-gcm", "sm4-gcm"],
                    "created": iso(int(file.stat().st_mtime * 1_000_000)),
                    "active": not state and i == len(keys_) - 1,
                    "state": state or ("active" if i == len(keys_) - 1 else "opens older wraps"),
                    "file": str(file),
                }
            )
    return rows, []


@master_app.command("rotate")
def master_rotate(
    retire_old: Annotated[
        bool,
        typer.Option(
            "--retire-old", help="Then remove older master keys and their wraps (after every re-wrap worked)."
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a new master key and re-wrap every encrypted segment's data key under it; no footage is re-encrypted
    and no hash changes. Exit 1 when a segment's wrapped key could not be re-wrapped (listed)."""
    from sqlalchemy import select

    from nvr.models import Volume
    from storage.keyring import Keyring, rotate_master

    rt = runtime()
    if not yes and not typer.confirm(
        "make a new master key and re-wrap every data key"
        + (", then delete older master keys" if retire_old else "")
        + "?"
    ):
        typer.echo("nothing changed", err=True)
        raise typer.Exit(1)
    ring = Keyring(rt.settings.master_keys_dir)
    with rt.db.session() as s:
        volumes = {v.id: Path(v.path) for v in s.scalars(select(Volume))}
        r = rotate_master(s, ring, volumes, rt.clock.now_us(), cli_actor(), retire_old)
    data = {
        "active": r.new.key_id,
        "rewrapped": r.rewrapped,
        "already": r.already,
        "retired": r.retired,
        "problems": r.problems,
    }
    lines = [f"active master key {r.new.key_id}; re-wrapped {r.rewrapped} data key(s) ({r.already} already)"]
    lines += [f"retired {k}" for k in r.retired] + [f"problem: {p}" for p in r.problems]
    emit(data, as_json, "\n".join(lines))
    if r.problems:
        raise typer.Exit(1)

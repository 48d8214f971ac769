"""The pinned key log: trust lives in the keys folder (and the trusted_key_fingerprints setting), not in the
signing_keys table. Rotations are countersigned both ways; a lost key's replacement (reroot) needs pinning; an
edited, dropped or reordered line is named."""

from __future__ import annotations

import json
from pathlib import Path

from integrity import keylog, keys, signing
from nvr.runtime import Runtime

T0 = 1_700_000_000_000_000


def _lines(kd: Path) -> list[str]:
    return keylog.path(kd).read_text().splitlines()


def test_rotations_chain_from_the_first_key_and_a_lost_key_reroots(runtime: Runtime, settings_factory) -> None:
    rt = runtime
    kd = rt.settings.keys_dir
    with rt.db.session() as s:
        first = keys.ensure_key(s, kd, T0)
    with rt.db.session() as s:
        _, second = keys.rotate(s, kd, T0 + 1)
    pinned = keylog.load(kd)
    assert pinned.problems == [] and set(pinned.keys) == {first.key_id, second.key_id}

    # Trust passes both ways: pinning only the newest fingerprint out of band still trusts the first key.
    assert set(keylog.load(kd, [second.fingerprint]).keys) == {first.key_id, second.key_id}
    assert set(keylog.load(kd, [first.fingerprint]).keys) == {first.key_id, second.key_id}
    # A fingerprint that is in no record: nothing of the log is trusted.
    _, stranger = signing.generate()
    assert keylog.load(kd, [stranger.public.fingerprint]).keys == {}

    # The active private key is lost: the rotation cannot be countersigned, so the new key is a reroot.
    keys.private_path(kd, second.key_id).unlink()
    with rt.db.session() as s:
        _, third = keys.rotate(s, kd, T0 + 2)
    pinned = keylog.load(kd)
    assert third.key_id not in pinned.keys and "reroot" in pinned.untrusted[third.key_id]
    assert {first.key_id, second.key_id} <= set(pinned.keys)
    # Pinned by the setting, it is trusted (the earlier keys stay trusted through the genesis root only when
    # nothing is pinned; with a pin, each component needs a pinned key of its own).
    pinned = keylog.load(kd, [third.fingerprint])
    assert third.key_id in pinned.keys
    rt2 = Runtime.open(settings_factory(trusted_key_fingerprints=[third.fingerprint, first.fingerprint]))
    with rt2.db.session() as s:
        assert set(keys.trusted_keys(s, rt2.settings)) == {first.key_id, second.key_id, third.key_id}
    rt2.db.dispose()


def test_a_key_row_inserted_into_the_database_is_not_trusted(runtime: Runtime) -> None:
    from nvr.models import SigningKey

    rt = runtime
    with rt.db.session() as s:
        keys.ensure_key(s, rt.settings.keys_dir, T0)
    _, mine = signing.generate()
    with rt.db.session() as s:
        s.add(
            SigningKey(
                key_id=mine.key_id,
                suite=mine.suite,
                public_key_pem=mine.public.pem,
                fingerprint=mine.public.fingerprint,
                created_us=T0,
                retired_us=None,
            )
        )
    with rt.db.session() as s:
        assert mine.key_id in keys.public_key_map(s)  # the table has it...
        assert mine.key_id not in keys.trusted_keys(s, rt.settings)  # ...trust does not come from the table


def test_edited_dropped_or_reordered_lines_are_named(runtime: Runtime) -> None:
    rt = runtime
    kd = rt.settings.keys_dir
    with rt.db.session() as s:
        keys.ensure_key(s, kd, T0)
    for i in range(2):
        with rt.db.session() as s:
            keys.rotate(s, kd, T0 + 1 + i)
    good = _lines(kd)
    assert len(good) == 3 and keylog.load(kd).problems == []

    keylog.path(kd).write_text("\n".join([good[0], good[2]]) + "\n")  # the middle rotation dropped
    problems = keylog.load(kd).problems
    assert any("seq" in p for p in problems) and any("rotation is not signed" in p for p in problems)

    keylog.path(kd).write_text("\n".join([good[0], good[2], good[1]]) + "\n")  # reordered
    assert keylog.load(kd).problems

    rec = json.loads(good[2])
    body = json.loads(rec["body"])
    _, mine = signing.generate()
    body["public_key_pem"], body["fingerprint"] = mine.public.pem, mine.public.fingerprint  # a key swapped in
    rec["body"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    keylog.path(kd).write_text("\n".join([good[0], good[1], json.dumps(rec)]) + "\n")
    pinned = keylog.load(kd)
    assert mine.key_id not in pinned.keys and pinned.problems


def test_an_old_server_starts_its_log_from_the_keys_folder(runtime: Runtime) -> None:
    """A server made before the key log: the active key becomes genesis and older public key files in the folder
    are imported, vouched for by it; a key row with no file in the folder is not."""
    rt = runtime
    kd = rt.settings.keys_dir
    with rt.db.session() as s:
        old = keys.ensure_key(s, kd, T0)
    with rt.db.session() as s:
        _, new = keys.rotate(s, kd, T0 + 1)
    keylog.path(kd).unlink()  # as before the log existed
    with rt.db.session() as s:
        assert keys.ensure_log(s, kd) is True
    pinned = keylog.load(kd)
    actions = [json.loads(json.loads(line)["body"])["action"] for line in _lines(kd)]
    assert actions == ["genesis", "import"] and pinned.problems == []
    assert set(pinned.keys) == {old.key_id, new.key_id}

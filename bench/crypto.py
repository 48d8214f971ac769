"""Crypto-suite benchmark: our SM3/SHA-256, SM4-GCM/AES-256-GCM and SM2/Ed25519 paths beside OpenSSL's own tools.

Measured side by side in one run, on the same files and sizes:

* **file digests**: ``integrity.verify_archive.hash_file`` (what ``nvr verify`` and the scrubber hash each segment
  file with: ``readinto`` a reused 1 MiB buffer, one thread per file) and ``integrity.suites.file_digest`` (recovery,
  exports) over ``--files`` files of ``--file-mib`` MiB, against one ``openssl dgst -sm3`` / ``-sha256`` process
  over the same files (page cache warm for both: each side reads them once untimed first). For SM3 the
  ``cryptography`` (its bundled OpenSSL) implementation is measured too, as the alternative to hashlib's;
* **AEAD throughput**: ``integrity.suites.seal`` on ``--record-kib`` records (a recorder fragment is 100 to 500 KiB)
  and ``storage.crypt.EncryptingWriter`` writing a file of such records, against ``openssl speed -evp
  aes-256-gcm`` and, for SM4, ``openssl speed -evp sm4-ctr`` (the system's OpenSSL 3.0 has no SM4-GCM; GCM is
  CTR plus GHASH, so the CTR figure is an upper bound for it);
* **signatures**: ``integrity.signing`` sign and verify per second for Ed25519 and SM2, against ``openssl speed
  ed25519 sm2``.

Ratios are ours / OpenSSL's (1.0 = as fast). ``--quick`` uses small sizes and one repetition and checks that every
figure was measured (the test suite runs it). Results go to ``--out`` as JSON.

Usage::

    .venv/bin/python bench/crypto.py --out bench/results/crypto.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

from integrity import signing, suites, verify_archive  # noqa: E402
from storage import crypt  # noqa: E402

MIB = 1 << 20


def _best(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _cryptography_sm3(path: Path) -> str:
    h = hashes.Hash(hashes.SM3())
    with open(path, "rb") as f:
        while chunk := f.read(suites.CHUNK):
            h.update(chunk)
    return h.finalize().hex()


def digests(files: list[Path], reps: int) -> dict[str, Any]:
    total = sum(p.stat().st_size for p in files)
    out: dict[str, Any] = {}
    for alg in suites.HASH_ALGS:
        buf = bytearray(verify_archive.CHUNK)  # hash_files gives each of its threads one buffer of this size
        for p in files:  # warm the page cache for both sides
            suites.file_digest(alg, p)

        def verify_path(alg: str = alg, buf: bytearray = buf) -> None:
            for p in files:
                verify_archive.hash_file(p, buf, hash_alg=alg)

        def verify_threads(alg: str = alg) -> None:
            def alg_of(_path: Path, alg: str = alg) -> str:
                return alg

            for _path, fh in verify_archive.hash_files(files, Path, alg_of=alg_of):
                assert not isinstance(fh, OSError)

        def file_digest(alg: str = alg) -> None:
            for p in files:
                suites.file_digest(alg, p)

        def theirs(alg: str = alg) -> None:
            subprocess.run(["openssl", "dgst", f"-{alg}", *map(str, files)], check=True, capture_output=True)

        # Interleaved, best of ``reps`` each: a burst of other load on the shared machine hits both sides alike.
        times: dict[str, list[float]] = {"verify": [], "threads": [], "file_digest": [], "openssl": []}
        for _ in range(reps):
            times["verify"].append(_best(verify_path, 1))
            times["threads"].append(_best(verify_threads, 1))
            times["file_digest"].append(_best(file_digest, 1))
            times["openssl"].append(_best(theirs, 1))
        a, th, f, b = (min(times[k]) for k in ("verify", "threads", "file_digest", "openssl"))
        mine = [verify_archive.hash_file(p, buf, hash_alg=alg).sha256 for p in files]
        run = subprocess.run(["openssl", "dgst", f"-{alg}", "-r", *map(str, files)], capture_output=True, text=True)
        ref = [line.split()[0] for line in run.stdout.splitlines()]
        out[alg] = {
            "ours": "integrity.verify_archive.hash_file, one thread (nvr verify's per-file hash; the scrubber's)",
            "ours_mb_s": round(total / a / 1e6, 1),
            "verify_threads": verify_archive.THREADS,
            "verify_threads_mb_s": round(total / th / 1e6, 1),
            "file_digest_mb_s": round(total / f / 1e6, 1),
            "openssl_command": f"openssl dgst -{alg} <{len(files)} files>",
            "openssl_mb_s": round(total / b / 1e6, 1),
            "ratio": round(b / a, 3),
            "same_digests": mine == ref and [suites.file_digest(alg, p) for p in files] == ref,
        }
        if alg == "sm3":
            out[alg]["hashlib_backend"] = "hashlib (system OpenSSL)" if suites._HASHLIB_SM3 else "cryptography"
            t = _best(lambda: [_cryptography_sm3(p) for p in files], reps)
            out[alg]["cryptography_sm3_mb_s"] = round(total / t / 1e6, 1)
    return out


def _openssl_speed_evp(cipher: str, size: int) -> float | None:
    run = subprocess.run(
        ["openssl", "speed", "-evp", cipher, "-seconds", "1", "-bytes", str(size)], capture_output=True, text=True
    )
    m = re.search(r"^\S+\s+([\d.]+)k\s*$", run.stdout, re.M)
    return float(m.group(1)) * 1000 / 1e6 if m else None


def aead(record_kib: int, total_mib: int, reps: int, tmp: Path) -> dict[str, Any]:
    size = record_kib * 1024
    record = os.urandom(size)
    n = max(1, total_mib * MIB // size)
    out: dict[str, Any] = {}
    for cipher, reference in (("aes-256-gcm", "aes-256-gcm"), ("sm4-gcm", "sm4-ctr")):
        key = suites.new_key(cipher)

        def seal(cipher: str = cipher, key: bytes = key) -> None:
            for i in range(n):
                suites.seal(cipher, key, i.to_bytes(12, "big"), record, b"aad")

        def write_file(cipher: str = cipher, key: bytes = key) -> None:
            path = tmp / f"enc-{cipher}.mp4"
            path.unlink(missing_ok=True)
            w = crypt.EncryptingWriter(path, cipher, key, "sm3" if cipher == "sm4-gcm" else "sha256")
            for _ in range(n):
                w.write(record)
                w.seal()
            w.finish()
            w.close()

        def write_plain(cipher: str = cipher) -> None:
            from integrity.hashing import HashingWriter

            path = tmp / f"plain-{cipher}.mp4"
            path.unlink(missing_ok=True)
            w = HashingWriter(path, "sm3" if cipher == "sm4-gcm" else "sha256")
            for _ in range(n):
                w.write(record)
            w.close()

        t_seal, t_file, t_plain = _best(seal, reps), _best(write_file, reps), _best(write_plain, reps)
        ref = _openssl_speed_evp(reference, size)
        ours = n * size / t_seal / 1e6
        like_for_like: dict[str, Any] = {}
        if reference == "sm4-ctr":
            # The stand-in's own primitive through our library, so the OpenSSL comparison is like for like too.
            def ctr(key: bytes = key) -> None:
                for i in range(n):
                    enc = Cipher(algorithms.SM4(key), modes.CTR(i.to_bytes(16, "big"))).encryptor()
                    enc.update(record)
                    enc.finalize()

            like_for_like = {"ours_sm4_ctr_mb_s": round(n * size / _best(ctr, reps) / 1e6, 1)}
        out[cipher] = {
            "record_kib": record_kib,
            "seal_mb_s": round(ours, 1),
            "openssl_reference": f"openssl speed -evp {reference} -bytes {size}",
            "openssl_mb_s": round(ref, 1) if ref else None,
            "ratio": round(ours / ref, 3) if ref else None,
            "encrypted_file_write_mb_s": round(n * size / t_file / 1e6, 1),
            "plain_hashed_file_write_mb_s": round(n * size / t_plain / 1e6, 1),
            **like_for_like,
        }
    return out


def _openssl_speed_sig() -> dict[str, dict[str, float]]:
    run = subprocess.run(["openssl", "speed", "-seconds", "1", "ed25519", "sm2"], capture_output=True, text=True)
    found: dict[str, dict[str, float]] = {}
    for line in run.stdout.splitlines():
        m = re.search(r"\((Ed25519|CurveSM2)\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            name = "ed25519" if m.group(1) == "Ed25519" else "sm2"
            found[name] = {"sign_s": float(m.group(2)), "verify_s": float(m.group(3))}
    return found


def signatures(seconds: float, rounds: int) -> dict[str, Any]:
    """Sign and verify per second for each suite, beside ``openssl speed``; ``rounds`` alternations of the two,
    best of each kept (a burst of other load on a shared machine then cannot decide the ratio on its own)."""
    message = os.urandom(600)  # a checkpoint body is a few hundred bytes
    keys = {}
    for suite in suites.SUITE_NAMES:
        _pem, signer = signing.generate(suite)
        keys[suite] = (signer, signer.sign(message))
    out: dict[str, Any] = {suite: {"sign_s": 0.0, "verify_s": 0.0, "public_key_parse_s": 0.0} for suite in keys}
    refs: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, figures in _openssl_speed_sig().items():
            best = refs.setdefault(name, {"sign_s": 0.0, "verify_s": 0.0})
            for what, value in figures.items():
                best[what] = max(best[what], value)
        for suite, (signer, sig) in keys.items():
            for what, fn in (
                ("sign_s", lambda signer=signer: signer.sign(message)),
                (
                    "verify_s",
                    lambda suite=suite, signer=signer, sig=sig: signing.verify(suite, signer.public.pem, message, sig),
                ),
                # verify parses the PEM key on every call: this (parse + fingerprint) bounds that share from above
                (
                    "public_key_parse_s",
                    lambda suite=suite, signer=signer: signing.public_key_info(suite, signer.public.pem),
                ),
            ):
                count, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    fn()
                    count += 1
                out[suite][what] = max(out[suite][what], round(count / (time.perf_counter() - t0), 1))
    for suite, (signer, sig) in keys.items():
        name = suites.get(suite).signature
        if name in refs:
            out[suite]["openssl"] = refs[name]
            out[suite]["openssl_command"] = f"openssl speed -seconds 1 {name}"
            out[suite]["sign_ratio"] = round(out[suite]["sign_s"] / refs[name]["sign_s"], 3)
            out[suite]["verify_ratio"] = round(out[suite]["verify_s"] / refs[name]["verify_s"], 3)
        out[suite]["verifies"] = signing.verify(suite, signer.public.pem, message, sig)
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import cryptography

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "hashlib_openssl": ssl.OPENSSL_VERSION,
        "cryptography": cryptography.__version__,
        "cryptography_openssl": _cryptography_openssl(),
        "loadavg_at_start": os.getloadavg(),
    }


def _cryptography_openssl() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition; checks every figure exists")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--file-mib", type=int, default=32)
    ap.add_argument("--record-kib", type=int, default=256)
    ap.add_argument("--aead-mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "crypto.json")
    a = ap.parse_args()
    if a.quick:
        a.files, a.file_mib, a.aead_mib, a.reps = 2, 1, 4, 1
    with tempfile.TemporaryDirectory(prefix="nvr-bench-crypto-") as d:
        tmp = Path(d)
        files = []
        for i in range(a.files):
            p = tmp / f"seg-{i}.mp4"
            p.write_bytes(os.urandom(a.file_mib * MIB))
            files.append(p)
        result: dict[str, Any] = {
            "command": " ".join([".venv/bin/python", "bench/crypto.py", *sys.argv[1:]]),
            "machine": machine(),
            "params": vars(a) | {"out": str(a.out)},
            "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
            "digests": digests(files, a.reps),
            "aead": aead(a.record_kib, a.aead_mib, a.reps, tmp),
            "signatures": signatures(0.2 if a.quick else 2.0, 1 if a.quick else 3),
        }
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    problems = [
        f"{alg}: digests differ from openssl's" for alg, r in result["digests"].items() if not r["same_digests"]
    ]
    problems += [f"{s}: signature did not verify" for s, r in result["signatures"].items() if not r["verifies"]]
    problems += [f"{c}: no throughput measured" for c, r in result["aead"].items() if not r["seal_mb_s"] > 0]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

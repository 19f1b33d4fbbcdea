"""The data layer: lookup order (data folder, cache, package), `scalelab data list/path`, and `scalelab data pull`
against an HTTP server on 127.0.0.1 started here (checksums, atomic writes, offline)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalelab import data_sources as ds
from scalelab.__main__ import main
from scalelab.common import UsageError

TOY_FILES = {"a.txt": b"first file\n" * 50, "sub.jsonl": b'{"text": "second"}\n' * 20}


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An empty data folder and an empty cache (through XDG_CACHE_HOME), and a registry with a toy set."""
    data, xdg = tmp_path / "data", tmp_path / "xdg"
    data.mkdir()
    monkeypatch.setenv(ds.ENV, str(data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("SCALELAB_NO_PROGRESS", "1")
    files = {name: ds.Remote("someone/toy@0123abcd", f"files/{name}", hashlib.sha256(body).hexdigest(), len(body))
             for name, body in TOY_FILES.items()}
    monkeypatch.setitem(ds.SETS, "toy", ds.NamedSet("text", "CC0", "a toy set served by the test", files))
    return data, xdg / "scalelab" / "data"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on 127.0.0.1 over a folder laid out like raw.githubusercontent.com."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def publish(root: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        path = root / "someone" / "toy" / "0123abcd" / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lookup_order_data_folder_then_cache_then_package(dirs: tuple[Path, Path]) -> None:
    data, cache = dirs
    assert ds.locate("toy") is None
    with pytest.raises(UsageError, match=r"data set 'toy' not found .*scalelab data pull toy"):
        ds.require("toy")
    for folder in (cache / "toy", data / "toy"):
        folder.mkdir(parents=True)
        (folder / "a.txt").write_bytes(TOY_FILES["a.txt"])
    assert ds.locate("toy") is None  # incomplete in both: a set counts only with every expected file
    assert ds.data_file("toy", "a.txt") == data / "toy" / "a.txt"  # a single file: the first tier that has it
    (cache / "toy" / "sub.jsonl").write_bytes(TOY_FILES["sub.jsonl"])
    assert ds.locate("toy") == ds.Found("toy", "cache", cache / "toy")
    (data / "toy" / "sub.jsonl").write_bytes(TOY_FILES["sub.jsonl"])
    assert ds.locate("toy") == ds.Found("toy", "data folder", data / "toy")  # the user's folder wins
    # shipped sets need no folder at all
    assert ds.locate("digits").tier == "package" and ds.locate("stdlib").tier == "package"
    with pytest.raises(UsageError, match="unknown data set 'nope'"):
        ds.locate("nope")
    # an explicit folder (a task's data_dir) is the only place looked at
    with pytest.raises(UsageError, match="data file not found"):
        ds.data_file("toy", "a.txt", folder=cache.parent / "elsewhere")


def test_default_data_folder_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ds.ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    checkout = Path(ds.__file__).resolve().parents[1]
    assert ds.data_dir() == checkout.parent / "shared" / "data"  # today's default beside the checkout
    assert ds.cache_dir() == Path.home() / ".cache" / "scalelab" / "data"


def test_every_public_set_has_a_pinned_source() -> None:
    for name, entry in ds.SETS.items():
        assert entry.kind in ("text", "chat", "eval", "tabular") and entry.licence and entry.description, name
        assert bool(entry.files) != bool(entry.shipped), name
        for remote in entry.files.values():
            assert remote.url.startswith(ds.GITHUB_RAW + "/") and len(remote.repo.split("@")[1]) == 40, name
            assert len(remote.sha256) == 64 and remote.size > 0, name


def test_list_and_path(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    data, _ = dirs
    (data / "toy").mkdir()
    for name, body in TOY_FILES.items():
        (data / "toy" / name).write_bytes(body)
    assert main(["data", "list", "toy", "digits", "gsm8k"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:4]}
    assert "yes" in rows["toy"] and f"data folder: {data / 'toy'}" in rows["toy"] and "CC0" in rows["toy"]
    assert "yes" in rows["digits"] and "package:" in rows["digits"] and "scikit-learn" in rows["digits"]
    assert " no " in rows["gsm8k"] and "(4.7 MiB)" in rows["gsm8k"] and "(pull it)" in rows["gsm8k"]
    assert "2 of 3 present" in out
    assert main(["data", "path", "toy"]) == 0 and capsys.readouterr().out.strip() == str(data / "toy")
    assert main(["data", "path", "gsm8k"]) == 2
    assert "gsm8k' not found" in capsys.readouterr().err
    assert main(["data", "list", "nope"]) == 2


def test_pull_verifies_and_writes_into_the_cache(dirs: tuple[Path, Path], server: tuple[str, Path],
                                                 capsys: pytest.CaptureFixture) -> None:
    _, cache = dirs
    url, root = server
    publish(root, TOY_FILES)
    assert main(["data", "pull", "toy", "--mirror", url]) == 0
    assert "2 files verified" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (cache / "toy").iterdir()} == TOY_FILES
    assert ds.locate("toy") == ds.Found("toy", "cache", cache / "toy")
    assert [p.name for p in cache.iterdir()] == ["toy"]  # no staging folder left behind
    # pulled files are kept: a second pull downloads nothing (the server no longer has them)
    for p in root.rglob("*.txt"):
        p.unlink()
    assert main(["data", "pull", "toy", "--mirror", url]) == 0


def test_pull_bad_checksum_keeps_nothing(dirs: tuple[Path, Path], server: tuple[str, Path],
                                         capsys: pytest.CaptureFixture) -> None:
    """The first file is right, the second corrupted: the set is not written at all (not even the good file)."""
    _, cache = dirs
    url, root = server
    publish(root, {"a.txt": TOY_FILES["a.txt"], "sub.jsonl": TOY_FILES["sub.jsonl"].replace(b"second", b"SECOND")})
    assert main(["data", "pull", "toy", "--mirror", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sub.jsonl: checksum mismatch" in err
    assert not (cache / "toy").exists() and list(cache.iterdir()) == []
    (root / "someone" / "toy" / "0123abcd" / "files" / "sub.jsonl").unlink()
    assert main(["data", "pull", "toy", "--mirror", url]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_pull_offline_says_so_in_one_line(tmp_path: Path) -> None:
    """Through the real entry point: nothing listens on the mirror's port, as when the network is down."""
    env = {"SCALELAB_DATA": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin",
           "SCALELAB_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "scalelab", "data", "pull", "tiny_shakespeare", "--mirror",
                           f"http://127.0.0.1:{closed_port()}", "--timeout", "5"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach 127.0.0.1" in lines[0] and "offline?" in lines[0], proc.stderr
    assert not (tmp_path / "xdg" / "scalelab" / "data" / "tiny_shakespeare").exists()


def test_a_named_set_is_a_corpus_source(dirs: tuple[Path, Path]) -> None:
    from scalelab.lm.data.corpus import parse_source

    data, _ = dirs
    with pytest.raises(UsageError, match="scalelab data pull toy"):
        parse_source("toy:2")
    (data / "toy").mkdir()
    for name, body in TOY_FILES.items():
        (data / "toy" / name).write_bytes(body)
    src = parse_source("toy:2")
    assert src.path == str(data / "toy") and src.weight == 2.0 and src.kind == "files"


def test_a_file_folder_or_glob_inside_a_named_set_is_a_corpus_source(dirs: tuple[Path, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SET/REL names a file, folder or glob inside the set, wherever the data layer finds it; a local path wins."""
    from scalelab.lm.data.corpus import iter_source, parse_source

    data, _ = dirs
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="scalelab data pull toy"):
        parse_source("toy/a.txt")
    for name, body in {**TOY_FILES, "more/b.txt": b"third\n"}.items():
        (data / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (data / "toy" / name).write_bytes(body)
    src = parse_source("toy/a.txt:2")
    assert (src.path, src.weight, src.kind) == (str(data / "toy" / "a.txt"), 2.0, "files")
    assert "".join(iter_source(src)) == TOY_FILES["a.txt"].decode()
    assert list(iter_source(parse_source("toy/sub.jsonl#text"))) == ["second"] * 20
    assert list(iter_source(parse_source("toy/more"))) == ["third\n"]
    assert parse_source("toy/*.txt").path == str(data / "toy" / "*.txt")
    with pytest.raises(UsageError, match="no such file"):
        parse_source("toy/missing.txt")
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.txt").write_text("local\n")
    assert parse_source("toy/a.txt").path == "toy/a.txt"


def test_the_demo_says_which_sets_it_used_and_which_it_replaced(tmp_path: Path) -> None:
    """scripts/demo.sh's data-set section (DEMO_DATA_ONLY=1 stops after it): in a bare clone MAGIC is replaced by
    digits and the chat sets by synthetic conversations, and it says so; a set that is present is named as used."""
    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    data.mkdir()
    env = {"SCALELAB_DATA": str(data), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PYTHON": sys.executable, "DEMO_DATA_ONLY": "1", "SCALELAB_NO_PROGRESS": "1"}

    def demo() -> dict[str, str]:
        done = subprocess.run(["bash", str(root / "scripts" / "demo.sh"), str(tmp_path / "run")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lines = dict(line.split(": ", 1) for line in done.stdout.splitlines()
                     if line.startswith(("used:", "replaced:")))
        assert "== tabular" not in done.stdout  # stopped after the data sets
        return lines

    bare = demo()
    assert bare["used"] == "stdlib (tokenizer and pretraining corpus), digits (tabular study)"
    assert bare["replaced"].startswith("magic_gamma_telescope -> scikit-learn's digits (tabular study); "
                                       "fastchat_dummy_conversation -> synthetic conversations (SFT)")
    (data / "magic_gamma_telescope").mkdir()
    for name in ds.SETS["magic_gamma_telescope"].files:
        (data / "magic_gamma_telescope" / name).write_text("stand-in\n")
    with_magic = demo()
    assert "magic_gamma_telescope (tabular study)" in with_magic["used"]
    assert "magic_gamma_telescope" not in with_magic["replaced"]

"""Hub references: parsing, pinned revisions, and the real datasets loading path on local dataset folders."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_engine.data.hub import HubRef, parse_hub_ref, revision_notes
from trace_engine.data.io import DatasetError
from trace_engine.data.load import load_pairs

REPO_ROOT = Path(__file__).resolve().parents[3]
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
ROWS = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "category": "RETAIN"} for i in range(3)]


def write_dataset_dir(root: Path) -> Path:
    folder = root / "repo"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), folder / "data" / "test-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hf://org/name@abc:train", HubRef("org/name", "abc", "train")),
        ("hf://org/name@" + COMMIT, HubRef("org/name", COMMIT, "train")),
        ("hf://org/name@v1:train[:100]", HubRef("org/name", "v1", "train[:100]")),
        ("hf://org/name:test", HubRef("org/name", None, "test")),
        ("hf://org/name@abc:alpaca-7b/test", HubRef("org/name", "abc", "test", config="alpaca-7b")),
    ],
)
def test_parse_hub_ref(text: str, expected: HubRef) -> None:
    assert parse_hub_ref(text) == expected


@pytest.mark.parametrize("text", ["hf://", "hf://@abc:train", "hf://org/name@:train", "hf://org/name@abc:/train"])
def test_bad_hub_refs_are_refused(text: str) -> None:
    with pytest.raises(DatasetError, match="hf://|revision"):
        parse_hub_ref(text)


def test_unpinned_refused_unless_allowed_and_branch_names_noted() -> None:
    with pytest.raises(DatasetError, match="no revision"):
        revision_notes(HubRef("org/name", None), allow_unpinned=False)
    assert "unpinned" in revision_notes(HubRef("org/name", None), allow_unpinned=True)[0]
    assert "branch or tag" in revision_notes(HubRef("org/name", "main"), allow_unpinned=False)[0]
    assert revision_notes(HubRef("org/name", COMMIT), allow_unpinned=False) == []


def test_local_dataset_folder_goes_through_load_dataset_with_revision(tmp_path: Path) -> None:
    folder = write_dataset_dir(tmp_path)
    calls: list[dict[str, Any]] = []

    def recording_loader(path: str, **kwargs: Any) -> Any:  # the real loader; we only record what it was given
        calls.append({"path": path, **kwargs})
        return datasets.load_dataset(path, **kwargs)

    ref = HubRef(repo=str(folder), revision=COMMIT, split="test")
    pairs, report = load_pairs(ref, loader=recording_loader, cache_dir=str(tmp_path / "cache"))
    assert calls == [{"path": str(folder), "name": None, "split": "test", "revision": COMMIT,
                      "cache_dir": str(tmp_path / "cache")}]
    assert [p.prompt for p in pairs] == ["p0"] and report.format == "hf"
    assert report.source == f"hf://{folder}@{COMMIT}:test"
    assert any("local folder" in n for n in report.notes)


def test_hf_string_ref_reads_the_split_and_refuses_unpinned(tmp_path: Path) -> None:
    folder = write_dataset_dir(tmp_path)
    pairs, report = load_pairs(f"hf://{folder}@{COMMIT}:train", cache_dir=str(tmp_path / "cache"))
    assert [p.extra for p in pairs] == [{"category": "RETAIN"}] * 3 and report.ok
    with pytest.raises(DatasetError, match="no revision"):
        load_pairs(f"hf://{folder}:train")
    pairs, report = load_pairs(f"hf://{folder}:train", allow_unpinned=True, cache_dir=str(tmp_path / "cache"))
    assert len(pairs) == 3 and "unpinned" in report.notes[0]


def test_missing_split_or_dataset_is_a_dataset_error(tmp_path: Path) -> None:
    folder = write_dataset_dir(tmp_path)
    with pytest.raises(DatasetError, match="cannot load"):
        load_pairs(f"hf://{folder}@{COMMIT}:validation", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="cannot load"):
        load_pairs(f"hf://{tmp_path / 'absent'}@{COMMIT}:train", cache_dir=str(tmp_path / "cache"))


def test_save_to_disk_folders_are_read_with_load_from_disk(tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2])}).save_to_disk(str(tmp_path / "dict"))
    single, report = load_pairs(tmp_path / "single")
    assert len(single) == 3 and report.format == "saved_dataset"
    assert [p.prompt for p in load_pairs(tmp_path / "dict")[0]] == ["p0", "p1"]


# --- A loopback stand-in for the Hub: the real huggingface_hub / datasets client code talks HTTP to it. ---

REV_A, REV_B = "a" * 40, "b" * 40


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def _fake_hub_files() -> dict[str, dict[str, bytes]]:
    card = b"---\nlicense: mit\n---\n# test dataset\n"
    parquet = "data/train-00000-of-00001.parquet"
    files = {
        REV_A: {"README.md": card, parquet: _parquet([{"prompt": "from A", "chosen": "c", "rejected": "r"}])},
        REV_B: {"README.md": card, parquet: _parquet([{"prompt": f"from B {i}", "chosen": "c", "rejected": "r"}
                                                      for i in range(2)])},
    }
    files["main"] = files[REV_B]
    return files


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers the three kinds of request `datasets.load_dataset` makes: file resolve, revision info, tree listing."""

    repo = "org/pairs"
    files = _fake_hub_files()

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def log_message(self, *args: Any) -> None:
        pass

    def _route(self, head: bool) -> None:
        url = urllib.parse.urlparse(self.path)
        path = urllib.parse.unquote(url.path)
        resolve, api = f"/datasets/{self.repo}/resolve/", f"/api/datasets/{self.repo}/"
        if path.startswith(resolve):
            rev, _, name = path[len(resolve):].partition("/")
            return self._file(rev, name, head)
        if path.startswith(api + "revision/"):
            rev = path[len(api + "revision/"):]
            if rev not in self.files:
                return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
            info = {"id": self.repo, "sha": self._sha(rev), "siblings": [{"rfilename": f} for f in self.files[rev]],
                    "private": False, "disabled": False, "gated": False, "tags": [], "cardData": {}}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if path.startswith(api + "tree/"):
            rev, _, folder = path[len(api + "tree/"):].partition("/")
            return self._tree(rev, folder.strip("/"), head)
        return self._send(404, b"{}", {}, head)

    def _sha(self, rev: str) -> str:
        return REV_B if rev == "main" else rev

    def _file(self, rev: str, name: str, head: bool) -> None:
        if rev not in self.files:
            return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
        if name not in self.files[rev]:
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self._sha(rev)}, head)
        body = self.files[rev][name]
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        return self._send(200, body, {"X-Repo-Commit": self._sha(rev), "ETag": etag}, head)

    def _tree(self, rev: str, folder: str, head: bool) -> None:
        if rev not in self.files:
            return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
        entries: list[dict[str, Any]] = []
        for name, body in self.files[rev].items():
            parent, _, _ = name.rpartition("/")
            if parent == folder:
                entries.append({"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()})
            elif not folder and parent and {"type": "directory", "path": parent, "oid": "0" * 40} not in entries:
                entries.append({"type": "directory", "path": parent, "oid": "0" * 40})
        return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)

    def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


LOAD_SCRIPT = """
import json, sys
from trace_engine.data.io import DatasetError
from trace_engine.data.load import load_pairs
out = {}
cache_dir, refs = sys.argv[1], sys.argv[2:]
for ref in refs:
    try:
        pairs, report = load_pairs(ref, cache_dir=cache_dir)
        out[ref] = {"prompts": [p.prompt for p in pairs], "notes": report.notes}
    except DatasetError as exc:
        out[ref] = {"error": str(exc)}
print(json.dumps(out))
"""


def test_pinned_revision_selects_the_data_over_http(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
               "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        refs = [f"hf://org/pairs@{REV_A}:train", f"hf://org/pairs@{REV_B}:train", f"hf://org/pairs@{'c' * 40}:train",
                "hf://org/pairs@main:train"]
        done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "cache"), *refs], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result[refs[0]] == {"prompts": ["from A"], "notes": []}
    assert result[refs[1]]["prompts"] == ["from B 0", "from B 1"]
    assert "cannot load" in result[refs[2]]["error"] and "c" * 40 in result[refs[2]]["error"]
    assert result[refs[3]]["prompts"] == ["from B 0", "from B 1"] and "branch or tag" in result[refs[3]]["notes"][0]

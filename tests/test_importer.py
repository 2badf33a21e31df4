"""clipsync import: AVLips folders, lip-sync CSV and search CSV/JSONL into a local folder and into S3 (moto)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from test_ingest import make_video
from test_storage import ACCESS, SECRET, make_bucket, moto_endpoint, s3_env  # noqa: F401  (fixtures reused)

from components.common.config import ConfigError
from components.common.manifest import read_manifest
from components.common.storage import open_store
from components.config import from_dict
from components.importer.config import ImportOptions
from components.importer.core import ImportLayoutError, import_folder
from components.ingest.core import run_ingest

STAMP = "2026-11-20T09:00:00+00:00"


def _tree(root: Path) -> dict[str, tuple[str, float]]:
    """Every entry under ``root`` (links not followed): content hash or link target, and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = (f"-> {os.readlink(path)}", path.lstat().st_mtime)
        elif path.is_file():
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime)
    return out


def _config(tmp_path: Path, source_uri: str):
    return from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "client_id": "imp",
            "storage": {"source_uri": source_uri},
            "window": {"as_of": "2026-12-01", "days": 30},
        }
    )


def _records(store, key: str) -> dict[str, dict]:
    lines = store.get_bytes(key).decode().splitlines()
    return {r["video_path"]: r for r in map(json.loads, lines)}


@pytest.fixture()
def avlips(tmp_path: Path) -> Path:
    """An AVLips-style folder with every kind of problem next to three good videos."""
    src = tmp_path / "AVLips"
    make_video(src / "real" / "a.mp4", seed=1)
    make_video(src / "real" / "sub dir" / "b.mp4", seed=2)
    make_video(src / "1_fake" / "c.mp4", seed=3)
    shutil.copy(src / "real" / "a.mp4", src / "real" / "z_copy_of_a.mp4")
    (src / "1_fake" / "empty.mp4").write_bytes(b"")
    (src / "real" / "notes.txt").write_text("interview list")
    (src / "wav" / "0_real").mkdir(parents=True)
    (src / "wav" / "0_real" / "a.wav").write_bytes(b"RIFF")
    outside = make_video(tmp_path / "elsewhere" / "secret.mp4", seed=4)
    (src / "real" / "escape.mp4").symlink_to(outside)
    (src / "real" / "dangling.mp4").symlink_to(src / "real" / "gone.mp4")
    return src


def test_avlips_folder_into_local_store_then_ingest(avlips, tmp_path):
    before = _tree(avlips)
    config = _config(tmp_path, str(tmp_path / "bucket"))
    report = import_folder(avlips, config.storage, ImportOptions("avlips", timestamp=STAMP), tmp_path / "cache")

    rows = {r.source: r for r in report.rows}
    assert sorted(rows) == sorted(before)  # every file of the folder is accounted for, links included
    status = {k: (r.status, r.reason.split(":")[0]) for k, r in rows.items()}
    assert status == {
        "real/a.mp4": ("imported", ""),
        "real/sub dir/b.mp4": ("imported", ""),
        "1_fake/c.mp4": ("imported", ""),
        "real/z_copy_of_a.mp4": ("rejected", "duplicate"),
        "1_fake/empty.mp4": ("rejected", "empty_file"),
        "real/notes.txt": ("rejected", "not_a_video"),
        "real/escape.mp4": ("rejected", "bad_link"),
        "real/dangling.mp4": ("rejected", "bad_link"),
        "wav/0_real/a.wav": ("ignored", "not_in_layout"),
    }
    assert report.counts()["imported"] == 3 and report.counts()["rejected_duplicate"] == 1
    assert _tree(avlips) == before  # the source folder is never modified

    store = open_store(config.storage.source_uri)
    assert report.labels_key == "labels/import-avlips.jsonl"
    records = _records(store, report.labels_key)
    assert records == {
        "videos/avlips/1_fake/c.mp4": {
            "video_path": "videos/avlips/1_fake/c.mp4",
            "labels": [],
            "category": "",
            "timestamp": STAMP,
            "authenticity": "fake",
        },
        **{
            f"videos/avlips/{k}": {
                "video_path": f"videos/avlips/{k}",
                "labels": [],
                "category": "",
                "timestamp": STAMP,
                "authenticity": "real",
            }
            for k in ("real/a.mp4", "real/sub dir/b.mp4")
        },
    }
    assert store.get_bytes("videos/avlips/real/a.mp4") == (avlips / "real" / "a.mp4").read_bytes()

    # What was imported is what ingest takes in: three labelled lip-sync videos in the window.
    ingest = run_ingest(tmp_path / "manifest.jsonl", config.ingest, config.context(track=False))  # as_of 2026-12-01
    assert ingest.accepted == 3 and not ingest.label_problems
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    assert sorted(r.authenticity for r in manifest) == ["fake", "real", "real"]

    # A rerun imports nothing twice and leaves the records (and their timestamps) alone.
    labels_before = store.get_bytes(report.labels_key)
    again = import_folder(avlips, config.storage, ImportOptions("avlips"), tmp_path / "cache")
    assert again.counts()["already_imported"] == 3 and "imported" not in again.counts()
    assert store.get_bytes(report.labels_key) == labels_before


def test_an_object_with_other_content_is_never_overwritten(avlips, tmp_path):
    config = _config(tmp_path, str(tmp_path / "bucket"))
    store = open_store(config.storage.source_uri)
    store.put_bytes("videos/avlips/real/a.mp4", b"the client's own file")
    report = import_folder(avlips, config.storage, ImportOptions("avlips", timestamp=STAMP), tmp_path / "cache")
    row = next(r for r in report.rows if r.source == "real/a.mp4")
    assert row.status == "rejected" and row.reason.startswith("exists: videos/avlips/real/a.mp4")
    assert store.get_bytes("videos/avlips/real/a.mp4") == b"the client's own file"
    assert "videos/avlips/real/a.mp4" not in _records(store, report.labels_key)


def test_lipsync_csv_rows_are_validated(tmp_path):
    src = tmp_path / "clips"
    for i, name in enumerate(("a.mp4", "b.mp4", "c.mp4", "unlisted.mp4")):
        make_video(src / "v" / name, seed=10 + i)
    make_video(tmp_path / "outside.mp4", seed=20)
    (src / "labels.csv").write_text(
        "path,label\n"
        "v/a.mp4,real\n"
        "./v/b.mp4,1\n"
        "v/c.mp4,maybe\n"
        "../outside.mp4,fake\n"
        "/etc/hostname,real\n"
        "v/missing.mp4,fake\n"
        "v/a.mp4,real,extra\n"
        "v\\a.mp4,real\n"
    )
    config = _config(tmp_path, str(tmp_path / "bucket"))
    options = ImportOptions("lipsync-csv", labels_file="labels.csv", name="clips", timestamp=STAMP)
    report = import_folder(src, config.storage, options, tmp_path / "cache")
    by_line = {r.line: (r.status, r.reason.split(":")[0]) for r in report.rows if r.line}
    assert by_line == {
        2: ("imported", ""),
        3: ("imported", ""),
        4: ("rejected", "bad_label"),
        5: ("rejected", "bad_name"),
        6: ("rejected", "bad_name"),
        7: ("rejected", "missing_file"),
        8: ("rejected", "bad_row"),
        9: ("rejected", "bad_name"),
    }
    ignored = {r.source: r.reason.split(":")[0] for r in report.rows if r.line == 0}
    assert ignored == {"v/c.mp4": "not_listed", "v/unlisted.mp4": "not_listed"}
    records = _records(open_store(config.storage.source_uri), report.labels_key)
    assert {k: r["authenticity"] for k, r in records.items()} == {
        "videos/clips/v/a.mp4": "real",
        "videos/clips/v/b.mp4": "fake",
    }
    # A video labelled both real and fake is not guessed at.
    (src / "labels.csv").write_text("video,authenticity\nv/c.mp4,real\nv/c.mp4,fake\n")
    report = import_folder(src, config.storage, options, tmp_path / "cache")
    assert {(r.line, r.status, r.reason.split(":")[0]) for r in report.rows if r.line} == {
        (2, "rejected", "conflicting_label"),
        (3, "rejected", "conflicting_label"),
    }


def test_lipsync_csv_fake_type_column_reaches_the_records_and_the_manifest(tmp_path):
    src = tmp_path / "clips"
    for i, name in enumerate(("a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4")):
        make_video(src / name, seed=30 + i)
    (src / "labels.csv").write_text(
        "file,label,method\n"
        "a.mp4,fake,wav2lip\n"
        "b.mp4,real,\n"
        "c.mp4,fake,\n"  # a fake of unknown type
        "d.mp4,real,wav2lip\n"  # a type for a real video
        "e.mp4,fake,wav 2 lip\n"  # not a name
    )
    config = _config(tmp_path, str(tmp_path / "bucket"))
    options = ImportOptions("lipsync-csv", labels_file="labels.csv", name="typed", timestamp=STAMP)
    report = import_folder(src, config.storage, options, tmp_path / "cache")
    by_line = {r.line: (r.status, r.fake_type, r.reason) for r in report.rows if r.line}
    assert by_line[2] == ("imported", "wav2lip", "") and by_line[3][:2] == by_line[4][:2] == ("imported", "")
    assert by_line[5] == ("rejected", "", "bad_label: fake type 'wav2lip' given for a real video")
    assert by_line[6][0] == "rejected" and by_line[6][2].startswith("bad_label: fake_type must be a short name")
    records = _records(open_store(config.storage.source_uri), report.labels_key)
    assert {k: r.get("fake_type") for k, r in records.items()} == {
        "videos/typed/a.mp4": "wav2lip",
        "videos/typed/b.mp4": None,
        "videos/typed/c.mp4": None,
    }
    manifest = tmp_path / "manifest.jsonl"
    run_ingest(manifest, config.ingest, config.context(track=False))
    assert {r.key: r.fake_type for r in read_manifest(manifest)} == {
        "videos/typed/a.mp4": "wav2lip",
        "videos/typed/b.mp4": "",
        "videos/typed/c.mp4": "",
    }
    # Two rows giving one video two types are not guessed at.
    (src / "labels.csv").write_text("video,label,fake_type\nc.mp4,fake,offset\nc.mp4,fake,partial\n")
    report = import_folder(src, config.storage, options, tmp_path / "cache")
    assert {(r.status, r.reason) for r in report.rows if r.line} == {
        ("rejected", "conflicting_label: rows give it two fake types")
    }


def test_search_jsonl_and_csv(tmp_path):
    src = tmp_path / "msrvtt"
    for i in range(4):
        make_video(src / "video" / f"video{i}.mp4", seed=30 + i)
    (src / "captions.jsonl").write_text(
        '{"video": "video/video0.mp4", "caption": "a man welds a steel pipe"}\n'
        '{"video": "video/video0.mp4", "caption": "sparks fly from a welding torch", "category": "welding"}\n'
        '{"video": "video/video1.mp4", "category": "curling"}\n'
        '{"video": "video/video2.mp4", "captions": ["a forklift", "a warehouse"], "category": "industrial"}\n'
        '{"video": "video/video3.mp4"}\n'
        "not json\n"
        '["video/video3.mp4"]\n'
    )
    config = _config(tmp_path, str(tmp_path / "bucket"))
    report = import_folder(
        src, config.storage, ImportOptions("search", labels_file="captions.jsonl", timestamp=STAMP), tmp_path / "c"
    )
    by_line = {r.line: (r.status, r.reason.split(":")[0]) for r in report.rows if r.line}
    assert by_line == {
        1: ("imported", ""),
        2: ("imported", ""),
        3: ("imported", ""),
        4: ("imported", ""),
        5: ("rejected", "no_label"),
        6: ("rejected", "bad_row"),
        7: ("rejected", "bad_row"),
    }
    assert {r.source: r.reason.split(":")[0] for r in report.rows if r.line == 0} == {"video/video3.mp4": "not_listed"}
    records = _records(open_store(config.storage.source_uri), report.labels_key)
    assert records["videos/msrvtt/video/video0.mp4"]["labels"] == [
        "a man welds a steel pipe",
        "sparks fly from a welding torch",
    ]
    assert records["videos/msrvtt/video/video0.mp4"]["category"] == "welding"
    assert records["videos/msrvtt/video/video1.mp4"]["labels"] == ["curling"]
    assert records["videos/msrvtt/video/video2.mp4"]["labels"] == ["a forklift", "a warehouse"]
    assert all("authenticity" not in r for r in records.values())

    (src / "more.csv").write_text("video_path,text,class\nvideo/video3.mp4,a diver near a pipeline,underwater\n")
    report = import_folder(
        src, config.storage, ImportOptions("search", labels_file="more.csv", name="msrvtt"), tmp_path / "c"
    )
    assert [(r.line, r.status) for r in report.rows if r.line] == [(2, "imported")]
    records = _records(open_store(config.storage.source_uri), report.labels_key)
    assert len(records) == 4 and records["videos/msrvtt/video/video3.mp4"]["category"] == "underwater"
    assert records["videos/msrvtt/video/video0.mp4"]["timestamp"] == STAMP  # earlier records keep their time


def test_layout_and_option_errors_name_the_problem(tmp_path, capsys):
    from pipelines.cli import main

    src = tmp_path / "flat"
    make_video(src / "x.mp4")
    config = _config(tmp_path, str(tmp_path / "bucket"))
    with pytest.raises(ImportLayoutError, match="no real/ or fake/ folder"):
        import_folder(src, config.storage, ImportOptions("avlips"), tmp_path / "c")
    (src / "l.csv").write_text("file,caption\nx.mp4,hi\n")
    with pytest.raises(ImportLayoutError, match=r"no real/fake label column .*columns: file, caption"):
        import_folder(src, config.storage, ImportOptions("lipsync-csv", labels_file="l.csv"), tmp_path / "c")
    with pytest.raises(ConfigError, match="needs a labels file"):
        ImportOptions("search")
    with pytest.raises(ConfigError, match="timestamp"):
        ImportOptions("avlips", timestamp="yesterday")
    assert not (tmp_path / "bucket").exists()  # nothing written
    home = ["--config", str(tmp_path / "c.yaml")]
    (tmp_path / "c.yaml").write_text(f"state_dir: {tmp_path / 'state'}\nstorage:\n  source_uri: {tmp_path / 'b2'}\n")
    assert main(["import", str(src), "--layout", "avlips", *home]) == 2
    assert "nothing imported: " in capsys.readouterr().err
    assert main(["import", str(src), "--layout", "search", "--labels", "l.csv", "--name", "flat", *home]) == 0
    out = capsys.readouterr().out
    assert "imported 1" in out and "every row and file with its status: " in out


def test_avlips_into_s3(avlips, s3_env, tmp_path):  # noqa: F811
    bucket = make_bucket(s3_env)
    config = _config(tmp_path, f"s3://{bucket}/acme")
    report = import_folder(avlips, config.storage, ImportOptions("avlips", timestamp=STAMP), tmp_path / "cache")
    assert report.counts()["imported"] == 3 and report.dest_uri == f"s3://{bucket}/acme"
    store = open_store(config.storage.source_uri)
    keys = sorted(store.list_keys(""))
    assert keys == [
        "labels/import-avlips.jsonl",
        "videos/avlips/1_fake/c.mp4",
        "videos/avlips/real/a.mp4",
        "videos/avlips/real/sub dir/b.mp4",
    ]
    assert store.get_bytes("videos/avlips/real/sub dir/b.mp4") == (avlips / "real" / "sub dir" / "b.mp4").read_bytes()
    again = import_folder(avlips, config.storage, ImportOptions("avlips"), tmp_path / "cache")
    assert again.counts()["already_imported"] == 3 and "imported" not in again.counts()

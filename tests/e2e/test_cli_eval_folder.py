"""`cbir eval folder` says on stderr which images it left out and which classes have one image."""

from __future__ import annotations

import json
from pathlib import Path

from badfiles import make_good_images
from cbir.cli import main

CH = ["--extractor", "colorhist"]


def _dataset(root: Path) -> tuple[Path, Path]:
    """root/{a: 3 images + a broken .jpg, b: 3 images, solo: 1 image}; returns (root, broken)."""
    images = make_good_images(root / "_src", 7)  # distinct images (no duplicates across classes)
    for cls, chunk in (("a", images[:3]), ("b", images[3:6]), ("solo", images[6:])):
        (root / cls).mkdir(parents=True)
        for p in chunk:
            p.rename(root / cls / p.name)
    (root / "_src").rmdir()
    broken = root / "a" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(range(256)))
    return root, broken


def test_eval_folder_warns_about_unreadable_images_and_single_image_classes(capsys, tmp_path):
    data, broken = _dataset(tmp_path / "data")
    coll = str(tmp_path / "coll")
    for run in ("first", "cached"):  # the second run reads the reasons back from the collection
        code = main(["-c", coll, "eval", "folder", str(data), *CH, "-q", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, run
        result = json.loads(out)
        assert result["images"] == 7 and result["failed"] == 1, run
        assert [f["path"] for f in result["failed_files"]] == [str(broken)]
        assert result["failed_files"][0]["reason"] not in ("", "not indexed")
        assert result["single_image_classes"] == ["solo"]
        assert f"skipped {broken}: {result['failed_files'][0]['reason']}" in err, run
        assert "1 image(s) could not be read" in err
        assert "class 'solo' has a single image" in err
        assert "class 'a'" not in err and "class 'b'" not in err

    code = main(["-c", coll, "eval", "folder", str(data), *CH, "-q"])  # table mode warns too
    out, err = capsys.readouterr()
    assert code == 0 and "P@1" in out and "warning:" not in out
    assert "class 'solo' has a single image" in err and str(broken) in err


def test_eval_folder_clean_dataset_has_no_warnings(capsys, tmp_path):
    data, broken = _dataset(tmp_path / "data")
    broken.unlink()
    (data / "solo").rename(data / "b" / "more")  # solo's image joins class b
    code = main(["-c", str(tmp_path / "coll"), "eval", "folder", str(data), *CH, "-q", "--json"])
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert code == 0 and result["failed"] == 0 and result["warnings"] == []
    assert result["single_image_classes"] == [] and "warning" not in err

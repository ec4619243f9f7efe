"""Model package: round trip, and one clear error per kind of damage."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.package import PackageError, governing_row, load_package, pack_package, read_manifest
from tests.conftest import make_package


def _outputs(model: torch.nn.Module, seed: int = 3) -> list[torch.Tensor]:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def test_round_trip_gives_identical_outputs(package_dir: Path, tmp_path: Path) -> None:
    pkg = load_package(package_dir)
    assert not pkg.model.training
    assert pkg.manifest.architecture.name == "msdnet"
    tar = pack_package(package_dir, tmp_path / "p.tar")
    from_tar = load_package(tar)
    for a, b in zip(_outputs(pkg.model), _outputs(from_tar.model), strict=True):
        assert torch.equal(a, b)
    assert from_tar.manifest == pkg.manifest


def test_saved_model_equals_the_original(tmp_path: Path) -> None:
    from tests.conftest import randomize_batchnorm, tiny_model

    path = make_package(tmp_path, "msdnet")
    torch.manual_seed(0)
    original, _ = tiny_model("msdnet", isc=False)
    randomize_batchnorm(original)
    original.eval()
    loaded = load_package(path).model
    for a, b in zip(_outputs(original), _outputs(loaded), strict=True):
        assert torch.equal(a, b)


def test_manifest_records_exits_budgets_and_checksums(package_dir: Path) -> None:
    m = read_manifest(package_dir)
    assert m.exits[-1].compute_fraction == 1.0
    assert [e.compute_fraction for e in m.exits] == sorted(e.compute_fraction for e in m.exits)
    assert set(m.files) == {"weights.safetensors", *(f"onnx/stage_{k}.onnx" for k in range(3))}
    assert m.budget_entry(0.7).budget == 0.5 and m.budget_entry(1.0).budget == 1.0


@pytest.mark.parametrize(
    ("rows", "budget", "want"),
    [
        ([0.25, 0.5, 1.0], 0.5, 0.5),  # exact
        ([0.25, 0.5, 1.0], 0.7, 0.5),  # between rows: the cheaper one, never more than asked
        ([0.25, 0.5, 1.0], 1.0, 1.0),
        ([0.25, 0.5], 1.0, None),  # 1.0 without a row: every image to the last exit
        ([0.25, 0.5], 0.9, 0.5),
        ([0.25, 0.5], 0.2, None),  # below the table
        ([], 0.5, None),
    ],
)
def test_governing_row(rows: list[float], budget: float, want: float | None) -> None:
    assert governing_row(rows, budget) == want


@pytest.fixture
def damaged(package_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pkg"
    shutil.copytree(package_dir, copy)
    return copy


def _edit_manifest(root: Path, **changes: object) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    path.write_text(json.dumps(data))


def test_missing_file(damaged: Path) -> None:
    (damaged / "onnx" / "stage_1.onnx").unlink()
    with pytest.raises(PackageError, match=r"missing file onnx/stage_1\.onnx"):
        load_package(damaged)


def test_missing_manifest(damaged: Path) -> None:
    (damaged / "manifest.json").unlink()
    with pytest.raises(PackageError, match=r"missing manifest\.json"):
        load_package(damaged)


def test_checksum_mismatch(damaged: Path) -> None:
    weights = damaged / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"checksum mismatch for weights\.safetensors"):
        load_package(damaged)


def test_unknown_schema_version(damaged: Path) -> None:
    _edit_manifest(damaged, schema_version=99)
    with pytest.raises(PackageError, match="unknown schema_version 99"):
        load_package(damaged)


def test_architecture_not_registered(damaged: Path) -> None:
    _edit_manifest(damaged, **{"architecture.name": "no_such_net"})
    with pytest.raises(PackageError, match=r"architecture not registered.*no_such_net"):
        load_package(damaged)


def test_budget_table_inconsistent_with_exits(damaged: Path) -> None:
    _edit_manifest(damaged, **{"budgets.0.thresholds": [0.5, 0.5]})
    with pytest.raises(PackageError, match=r"budget 0\.5: 2 thresholds for 3 exits"):
        load_package(damaged)


@pytest.mark.parametrize(
    ("fractions", "total"),
    [([1.2, -0.1, -0.1], "1"), ([0.5, 0.25, 0.5], "1.25"), ([0.2, 0.2, 0.2], "0.6")],
)
def test_exit_fractions_that_are_not_shares(damaged: Path, fractions: list[float], total: str) -> None:
    _edit_manifest(damaged, **{"budgets.0.exit_fractions": fractions})
    with pytest.raises(PackageError) as e:
        load_package(damaged)
    message = str(e.value)
    assert "budget 0.5: exit_fractions are the shares of images leaving at each exit" in message
    assert "none may be negative and they must sum to 1" in message
    assert f"got {fractions} (sum {total})" in message


def test_default_budget_outside_the_table(damaged: Path) -> None:
    _edit_manifest(damaged, default_budget=0.3)
    with pytest.raises(PackageError, match=r"default_budget 0\.3 is not in the budget table"):
        load_package(damaged)


def test_weights_that_do_not_fit(damaged: Path) -> None:
    _edit_manifest(damaged, **{"architecture.kwargs.growth_rate": 6})
    with pytest.raises(PackageError, match="weights do not fit"):
        load_package(damaged)


def test_not_a_package_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"this is not a tar file")
    with pytest.raises(PackageError, match="not a readable package archive"):
        load_package(bogus)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not found"):
        load_package(tmp_path / "nope")


def test_save_refuses_to_overwrite(package_dir: Path) -> None:
    from models.package import save_package

    pkg = load_package(package_dir)
    with pytest.raises(PackageError, match="already exists"):
        save_package(pkg.model, pkg.manifest, package_dir)


def test_overwrite_survives_an_interrupted_one(package_dir: Path, tmp_path: Path) -> None:
    from models.package import save_package

    pkg = load_package(package_dir)
    out = tmp_path / "pkg"
    save_package(pkg.model, pkg.manifest, out, export_onnx=False)
    stale = tmp_path / ".pkg.old"  # an earlier overwrite killed while removing the old package
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "weights.safetensors").write_bytes(b"half-deleted")
    save_package(pkg.model, pkg.manifest, out, export_onnx=False, overwrite=True)
    assert not stale.exists()
    for a, b in zip(_outputs(load_package(out).model), _outputs(pkg.model), strict=True):
        torch.testing.assert_close(a, b)


def test_a_package_written_before_int8_loads_unchanged(damaged: Path) -> None:
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest.pop("int8")  # the key a package exported before int8 graphs existed lacks
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    pkg = load_package(damaged)
    assert pkg.manifest.int8 is None and len(pkg.onnx_paths) == pkg.manifest.num_exits


@pytest.fixture
def damaged_int8(int8_package: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pkg"
    shutil.copytree(int8_package, copy)
    return copy


def test_missing_int8_graph(damaged_int8: Path) -> None:
    (damaged_int8 / "onnx" / "int8" / "stage_1.onnx").unlink()
    with pytest.raises(PackageError, match=r"missing file onnx/int8/stage_1\.onnx"):
        load_package(damaged_int8)


def test_int8_record_inconsistent_with_the_package(damaged_int8: Path) -> None:
    int8 = json.loads((damaged_int8 / "manifest.json").read_text())["int8"]
    _edit_manifest(damaged_int8, **{"int8.onnx": int8["onnx"][:2]})
    with pytest.raises(PackageError, match="int8: needs the fp32 graphs and 3 graphs"):
        load_package(damaged_int8)
    _edit_manifest(damaged_int8, **{"int8.onnx": int8["onnx"], "int8.budgets": int8["budgets"][:1]})
    with pytest.raises(PackageError, match="int8: its budget table must have the fp32 table's"):
        load_package(damaged_int8)

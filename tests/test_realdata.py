import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from nar_bench.config import load_config
from nar_bench.data.codes import CodesDataset
from nar_bench.data.imagefolder import imagefolder
from nar_bench.data.shapes import ShapesDataset, class_name
from nar_bench.errors import NarBenchError
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule
from nar_bench.run.extract_codes import extract_codes
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tokenizers.vq import VQConfig, VQTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = (0, 5, 10)  # red square, green circle, blue triangle: sorted names give labels 2, 1, 0
PER_CLASS = 3


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    return ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def write_shapes_folder(root: Path, image_size: int = 32) -> dict[str, np.ndarray]:
    """PNGs of a few shapes classes in root/<class name>/; returns {file path: palette codes}."""
    ds = ShapesDataset(16 * PER_CLASS, image_size=image_size, grid=image_size // 4)
    codes = {}
    for i in range(len(ds)):
        label = i % 16
        if label in CLASSES:
            path = root / class_name(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8_hwc(ds[i][0])).save(path)
            codes[str(path)] = ds.codes(i)[0].reshape(-1)
    return codes


def cfg_for(root: Path, *overrides: str):
    return load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.image_size=32", "data.grid_size=8",
                              "data.batch_size=4", *overrides])


# --- imagefolder --------------------------------------------------------------------------------
def test_center_crop_takes_the_middle_of_the_short_side_and_labels_are_sorted_class_folders(tmp_path):
    arr = np.zeros((64, 192, 3), np.uint8)  # wide: left / middle / right thirds in three colours
    arr[:, :64], arr[:, 64:128], arr[:, 128:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    for cls in ("zebra", "ant"):
        (tmp_path / cls).mkdir()
        Image.fromarray(arr).save(tmp_path / cls / "a.png")
    ds = imagefolder(cfg_for(tmp_path).data, "train")
    assert ds.class_names == ["ant", "zebra"] and [label for _, label in ds.samples] == [0, 1]
    image, label = ds[1]
    assert image.shape == (3, 32, 32) and label == 1
    assert torch.equal(image[:, 4:-4, 4:-4], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 24, 24))


def test_train_and_val_folders_and_num_val(tmp_path):
    write_shapes_folder(tmp_path / "train")
    write_shapes_folder(tmp_path / "val")
    cfg = cfg_for(tmp_path, "data.num_val=4")
    train, val = imagefolder(cfg.data, "train"), imagefolder(cfg.data, "val")
    assert len(train) == 9 and len(val) == 4 and val.folder == tmp_path / "val"
    assert len({label for _, label in val.samples}) == 3  # evenly spaced: every class kept
    (tmp_path / "val" / "extra").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "val" / "extra" / "x.png")
    with pytest.raises(NarBenchError, match="class folders of .* differ from the training folder's"):
        imagefolder(cfg.data, "val")


def make_bad_folder(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / "data"
    if kind == "missing":
        return root
    (root / "cat").mkdir(parents=True)
    if kind == "no_classes":
        (root / "cat").rmdir()
        Image.new("RGB", (32, 32)).save(root / "loose.png")
    elif kind == "empty_class":
        Image.new("RGB", (32, 32)).save(root / "cat" / "a.png")
        (root / "dog").mkdir()
        (root / "dog" / "notes.txt").write_text("no images here")
    elif kind == "unreadable":
        (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    elif kind == "too_small":
        Image.new("RGB", (40, 20)).save(root / "cat" / "tiny.png")
    return root


@pytest.mark.parametrize("kind, message", [
    ("missing", r"image folder '.*/data' not found; set data.root to a folder with one sub-folder of images per class"),
    ("no_classes", r"'.*/data' has no class sub-folders; put each class's images in its own folder"),
    ("empty_class", r"class folder '.*/data/dog' has no images .*; add images or remove the folder"),
    ("unreadable", r"cannot read image '.*/cat/broken.jpg' .*; delete or replace the file"),
    ("too_small", r"image '.*/cat/tiny.png' is 40x20 px, smaller than data.image_size 32; .*upscale_small_images"),
])
def test_bad_folders_and_images_are_clear_errors(tmp_path, kind, message):
    root = make_bad_folder(tmp_path, kind)
    with pytest.raises(NarBenchError, match=message):
        ds = imagefolder(cfg_for(root).data, "train")
        ds[0]


def test_small_images_are_upscaled_when_asked(tmp_path):
    root = make_bad_folder(tmp_path, "too_small")
    image, _ = imagefolder(cfg_for(root, "data.upscale_small_images=true").data, "train")[0]
    assert image.shape == (3, 32, 32)


def test_unset_root_is_a_clear_error():
    with pytest.raises(NarBenchError, match="data.root is not set"):
        imagefolder(load_config(None, ["data.name=imagefolder"]).data, "train")


# --- extract-codes -> codes -> training ---------------------------------------------------------
def test_extract_codes_is_exact_for_a_lossless_tokenizer_and_trains_a_paradigm(tmp_path):
    expected = write_shapes_folder(tmp_path / "images")
    out = extract_codes(cfg_for(tmp_path / "images", "data.num_val=3"), tmp_path / "codes", shard_size=4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"] == [8, 8] and manifest["num_tokens"] == 64 and manifest["vocab_size"] == 16
    assert manifest["num_classes"] == 3 and manifest["class_names"] == ["blue triangle", "green circle", "red square"]
    assert manifest["tokenizer"] == {"name": "palette", "checkpoint": None, "options": {}}
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [4, 4, 1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["codes", "images"]  # no temp folder left

    ds = CodesDataset(out, "train")
    files = sorted(expected, key=lambda p: (Path(p).parent.name, Path(p).name))  # the folder's sample order
    for i, path in enumerate(files):
        codes, label = ds[i]
        assert codes.dtype == torch.int64 and torch.equal(codes, torch.from_numpy(expected[path]))
        assert label == manifest["class_names"].index(Path(path).parent.name)
    assert len(CodesDataset(out, "val")) == 3

    cfg = load_config(None, ["data.name=codes", f"data.root={out}", "tokenizer.name=codes", "data.batch_size=4",
                             "model.paradigm=nar", "model.size=tiny", "trainer.max_steps=1"])
    data = GeneratorDataModule(cfg.data)
    module = GeneratorModule(cfg, data.num_classes)
    assert module.tokenizer.grid == (8, 8) and module.paradigm.num_steps == 8 + 8 - 1
    before = [p.detach().clone() for p in module.paradigm.parameters()]
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, data)
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.paradigm.parameters(), strict=True))


def test_extract_codes_with_a_vq_checkpoint_rebuilds_it_from_the_manifest(tmp_path):
    write_shapes_folder(tmp_path / "images")
    torch.manual_seed(0)
    options = {"codebook_size": 64, "code_dim": 4, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
               "z_channels": 8, "norm_groups": 4}
    vq = VQTokenizer(VQConfig(**{**options, "ch_mult": (1, 2, 2)}), 32).eval()
    torch.save({"model": vq.state_dict()}, tmp_path / "vq.pt")
    overrides = ["tokenizer.name=vq", f"tokenizer.checkpoint={tmp_path / 'vq.pt'}",
                 *[f"tokenizer.options.{k}={v}" for k, v in options.items()]]
    out = extract_codes(cfg_for(tmp_path / "images", *overrides), tmp_path / "codes", shard_size=100)
    images = torch.stack([imagefolder(cfg_for(tmp_path / "images").data, "train")[i][0] for i in range(9)])
    ds = CodesDataset(out, "train")
    codes = torch.stack([ds[i][0] for i in range(9)])
    assert torch.equal(codes, vq.encode(images))

    rebuilt = build_tokenizer(load_config(None, ["data.name=codes", f"data.root={out}", "tokenizer.name=codes"]))
    assert isinstance(rebuilt, VQTokenizer) and rebuilt.grid == (8, 8) and rebuilt.vocab_size == 64
    assert torch.equal(rebuilt.eval().decode(codes), vq.decode(codes))
    moved = tmp_path / "moved.pt"
    (tmp_path / "vq.pt").rename(moved)
    with pytest.raises(NarBenchError, match="vq.pt' not found"):
        build_tokenizer(load_config(None, ["data.name=codes", f"data.root={out}", "tokenizer.name=codes"]))
    relocated = load_config(None, ["data.name=codes", f"data.root={out}", "tokenizer.name=codes",
                                   f"tokenizer.checkpoint={moved}", "tokenizer.options.preset=synthetic"])
    assert torch.equal(build_tokenizer(relocated).eval().decode(codes), vq.decode(codes))


def test_failed_extraction_leaves_nothing_behind(tmp_path):
    write_shapes_folder(tmp_path / "images")
    (tmp_path / "images" / "red square" / "zz_broken.png").write_bytes(b"truncated")
    with pytest.raises(NarBenchError, match="zz_broken.png"):
        extract_codes(cfg_for(tmp_path / "images"), tmp_path / "codes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("overrides, message", [
    (["tokenizer.name=vq", "tokenizer.options.preset=synthetic"], "has learned weights but tokenizer.checkpoint"),
    (["data.name=codes"], "extract-codes reads images"),
])
def test_extract_codes_refuses_bad_setups(tmp_path, overrides, message):
    write_shapes_folder(tmp_path / "images")
    with pytest.raises(NarBenchError, match=message):
        extract_codes(cfg_for(tmp_path / "images", *overrides), tmp_path / "codes")
    assert not (tmp_path / "codes").exists()


def test_extract_codes_will_not_overwrite(tmp_path):
    (tmp_path / "codes").mkdir()
    with pytest.raises(NarBenchError, match="already exists"):
        extract_codes(cfg_for(tmp_path / "images"), tmp_path / "codes")


@pytest.fixture
def extracted(tmp_path) -> Path:
    write_shapes_folder(tmp_path / "images")
    return extract_codes(cfg_for(tmp_path / "images", "data.num_val=3"), tmp_path / "codes", shard_size=4)


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / "manifest.json").unlink(), "manifest.json' not found: data.root must be a folder written by"),
    (lambda out: (out / "train" / "codes_00001.npy").unlink(), "codes_00001.npy' listed in the manifest is missing"),
    (lambda out: np.save(out / "train" / "labels_00000.npy", np.zeros(3, np.int64)), "with 3 labels, expected"),
    (lambda out: np.save(out / "train" / "codes_00002.npy", np.zeros((1, 63), np.uint16)), r"\(1, 63\) .*expected"),
    (lambda out: (out / "manifest.json").write_text("{"), "is not valid JSON"),
])
def test_damaged_codes_folders_are_clear_errors(extracted, damage, message):
    damage(extracted)
    with pytest.raises(NarBenchError, match=message):
        GeneratorDataModule(load_config(None, ["data.name=codes", f"data.root={extracted}"]).data).split("train")


def test_codes_split_missing_or_count_mismatch(extracted):
    manifest = json.loads((extracted / "manifest.json").read_text())
    del manifest["splits"]["val"]
    manifest["splits"]["train"]["count"] = 10
    (extracted / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NarBenchError, match="has no 'val' codes"):
        CodesDataset(extracted, "val")
    with pytest.raises(NarBenchError, match="shards hold 9 items, the manifest says 10"):
        CodesDataset(extracted, "train")

import torch

from nar_bench.data.shapes import NUM_CLASSES, ShapesDataset
from nar_bench.tokenizers.palette import PaletteTokenizer


def test_dataset_is_deterministic_by_seed_and_split():
    a, b = ShapesDataset(32, seed=3), ShapesDataset(32, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in (0, 5, 31))
    assert not torch.equal(ShapesDataset(32, seed=4)[5][0], a[5][0])
    assert not torch.equal(ShapesDataset(32, seed=3, split="val")[5][0], a[5][0])


def test_images_labels_and_class_balance():
    ds = ShapesDataset(64, image_size=32, grid=8)
    img, label = ds[17]
    assert img.shape == (3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert label == 17 % NUM_CLASSES
    assert torch.bincount(torch.tensor([ds[i][1] for i in range(64)])).tolist() == [4] * NUM_CLASSES


def test_palette_tokenizer_round_trip_is_lossless():
    ds, tok = ShapesDataset(16), PaletteTokenizer(64, 16)
    images = torch.stack([ds[i][0] for i in range(16)])
    codes = tok.encode(images)
    assert codes.shape == (16, 256) and codes.max() < tok.vocab_size
    assert torch.equal(tok.decode(codes), images)
    assert torch.equal(tok.encode(tok.decode(codes)), codes)

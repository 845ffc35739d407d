"""'Not a chest X-ray': the OOD detector on real X-rays and a varied set of non-X-ray images.

The detector is fitted the way every run gets it: at the end of training, on the training split's
penultimate features and image statistics, threshold at the 99th percentile of the validation
split. The model is a smallcnn trained for 4 epochs at 64 px on the real radiographs in
../shared/data (COVID-19 image collection + NIH ChestX-ray14 sample, one binary COVID dataset,
split by patient).

Photographs come from scikit-image's bundled sample data (skimage/data/*.png|jpg, shipped inside
the scikit-image wheel: astronaut, cameraman, chelsea the cat, coffee, rocket, motorcycle, Hubble
deep field, moon, coins, textures, retina, text pages...; and 10 faces of its LFW subset); no
download at run time. The rest is drawn here: colour gradients and solid colours, rendered text,
blank frames, noise frames and drawings of shapes.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from eval_helpers import train_run

PHOTOS = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "moon.png", "coins.png", "clock_motion.png", "grass.png", "gravel.png",
          "brick.png", "cell.png", "retina.jpg", "ihc.png", "page.png", "text.png", "horse.png", "logo.png",
          "color.png", "microaneurysms.png", "chessboard_GRAY.png", "chessboard_RGB.png"]


def non_xray_images(out) -> list[str]:
    """60 image files that are not chest X-rays, as PNG / JPEG."""
    skimage = pytest.importorskip("skimage", reason="scikit-image (test extra) ships the sample photographs")
    src = os.path.join(os.path.dirname(skimage.__file__), "data")
    os.makedirs(out, exist_ok=True)
    files = []

    def save(im, name):
        files.append(os.path.join(out, name))
        im.save(files[-1])

    for p in PHOTOS:
        save(Image.open(os.path.join(src, p)), "photo-" + os.path.splitext(p)[0] + ".png")
    faces = np.load(os.path.join(src, "lfw_subset.npy"))
    for i in range(0, 100, 10):
        save(Image.fromarray((faces[i] * 255).astype(np.uint8)).resize((100, 100)), f"face-{i}.png")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    for i in range(4):
        c = rng.random((2, 3))
        save(Image.fromarray(((c[0] * xx[..., None] + c[1] * yy[..., None]) / 2 * 255).astype(np.uint8)),
             f"colour-gradient-{i}.jpg")
    for i, col in enumerate([(200, 30, 30), (30, 160, 40), (40, 60, 220)]):
        save(Image.new("RGB", (200, 150), col), f"colour-solid-{i}.png")
    font = ImageFont.load_default(size=18)
    texts = ["The quick brown fox jumps over the lazy dog.", "Lorem ipsum dolor sit amet, consectetur",
             "chest x-ray report: no acute findings", "0123456789 ABCDEFGHIJ klmnopqrst",
             "Invoice #4411 total 99.00 EUR"]
    for i, t in enumerate(texts):
        dark = i >= 3
        im = Image.new("L", (320, 240), 0 if dark else 255)
        draw = ImageDraw.Draw(im)
        for row in range(8):
            draw.text((8, 8 + row * 28), t[(row * 3) % len(t):] + " " + t, fill=255 if dark else 0, font=font)
        save(im, f"text-{i}.png")
    for name, v in (("black", 0), ("white", 255), ("gray", 128)):
        save(Image.new("L", (256, 256), v), f"blank-{name}.png")
    noise = {"uniform": rng.integers(0, 256, (256, 256)), "gaussian": np.clip(rng.normal(128, 40, (256, 256)), 0, 255),
             "saltpepper": np.where(rng.random((256, 256)) < 0.5, 0, 255), "colour": rng.integers(0, 256, (256, 256, 3)),
             "blocks": np.kron(rng.integers(0, 256, (8, 8)), np.ones((32, 32)))}
    for k, a in noise.items():
        save(Image.fromarray(a.astype(np.uint8)), f"noise-{k}.png")
    for i in range(6):
        gray = bool(i % 2)
        im = Image.new("L" if gray else "RGB", (256, 256), "white" if i < 3 else "black")
        draw = ImageDraw.Draw(im)
        for _ in range(5):
            x0, y0 = rng.integers(0, 200, 2)
            w, h = rng.integers(20, 120, 2)
            fill = int(rng.integers(0, 256)) if gray else tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x0, y0, x0 + w, y0 + h), fill=fill, outline=0 if i < 3 else 255)
        draw.polygon([(20, 230), (120, 140), (220, 230)], outline=0 if i < 3 else 255)
        save(im, f"shapes-{i}.png")
    return files


def real_xray_dataset(shared, out) -> str:
    """Both real sets as one binary COVID dataset: NIH ChestX-ray14 images (2017) are non-COVID."""
    c = pd.read_csv(shared / "covid-xray" / "metadata.csv", dtype=str, keep_default_na=False)
    n = pd.read_csv(shared / "nih-sample" / "Data_Entry_2017_sample.csv", dtype=str, keep_default_na=False)
    rows = pd.concat([
        pd.DataFrame({"filename": [f"covid-xray/{f}" for f in c["filename"]],
                      "patientid": "covid-" + c["patientid"], "covid": c["covid"], "view": c["view"]}),
        pd.DataFrame({"filename": [f"nih/{f}" for f in n["Image Index"]],
                      "patientid": "nih-" + n["Patient ID"], "covid": "0", "view": n["View Position"]})])
    # Filenames must stay inside the dataset folder: link the two real folders into it.
    os.makedirs(out, exist_ok=True)
    os.symlink(shared / "covid-xray", os.path.join(out, "covid-xray"))
    os.symlink(shared / "nih-sample" / "images", os.path.join(out, "nih"))
    rows.to_csv(os.path.join(out, "metadata.csv"), index=False)
    return str(out)


@pytest.mark.slow
def test_ood_flags_non_xrays_and_spares_real_xrays(shared_data, tmp_path):
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.data.shards import ShardDataset
    from cxrjobs.eval import ood
    from cxrjobs.eval.predict import expand_inputs, load_run, predict_files
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.storage import LocalStore

    raw = real_xray_dataset(shared_data, tmp_path / "raw")
    spec = PreprocessSpec(source=raw, format="covid", size=64)
    preprocess(spec, LocalStore(tmp_path / "cxr64"), "", show_progress=False)
    store = LocalStore(tmp_path / "store")
    train_run(store, "cxr", tmp_path / "cxr64", epochs=4)
    assert store.exists("runs/cxr/ood.json"), "training stores the detector with the run"
    rm = load_run(store, "cxr")
    det = ood.load_for_run(store, "cxr", rm=rm)
    assert det.info["threshold_from"] == "validation" and det.info["val_images"] > 50

    others = predict_files(rm, non_xray_images(tmp_path / "nonx"), det)
    assert len(others) == 60 and not any("error" in r for r in others)
    missed = [r["file"] for r in others if not r["ood"]]
    other_rate = 1 - len(missed) / len(others)
    assert all(r["label"] == "unknown" for r in others if r["ood"])

    test = ShardDataset(tmp_path / "cxr64", "test", "multiclass")
    held_out = predict_files(rm, test.index["source"].tolist(), det)
    every = predict_files(rm, expand_inputs([str(shared_data / "covid-xray"), str(shared_data / "nih-sample")]), det)
    held_rate = np.mean([r["ood"] for r in held_out])
    all_rate = np.mean([r["ood"] for r in every])
    print(f"\nOOD: non-X-ray flagged {len(others) - len(missed)}/{len(others)} = {other_rate:.3f} "
          f"(missed {[os.path.basename(m) for m in missed]}); real X-rays flagged: held-out test split "
          f"{sum(r['ood'] for r in held_out)}/{len(held_out)} = {held_rate:.3f}, all {len(every)} images "
          f"{sum(r['ood'] for r in every)}/{len(every)} = {all_rate:.3f}")
    assert other_rate >= 0.95, missed
    assert held_rate <= 0.05 and all_rate <= 0.05


def test_colour_check_needs_no_decode_for_gray_images(tmp_path):
    import io

    from cxrjobs.eval.ood import colourfulness, image_stats, STATS_DIMS

    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    assert colourfulness(png(Image.new("L", (50, 50), 90))) == 0.0
    assert colourfulness(png(Image.new("RGB", (50, 50), (90, 90, 90)))) == 0.0  # gray stored as RGB
    assert colourfulness(png(Image.new("RGB", (50, 50), (200, 30, 30)))) > 100
    stats = image_stats(np.zeros((3, 32, 32), np.uint8))
    assert stats.shape == (3, STATS_DIMS) and np.isfinite(stats).all()

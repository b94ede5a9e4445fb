"""Annotation readers: round trips on files the tests write, box conventions of each source, and errors that
name the file and line."""

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.data.annotations import (
    AnnotationError,
    Annotations,
    builtin_annotations,
    find_annotations,
    load_mask,
    nearest_resize,
    read_cub,
    read_voc,
    read_voc_xml,
    read_wsol_metadata,
    write_wsol_metadata,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wsol_folder(
    tmp_path,
    loc="a.jpg,1,2,3,4\nb.jpg,0,0,9,9\nb.jpg,5,5,6,6\n",
    sizes="a.jpg,10,8\nb.jpg,10,10\n",
    labels="a.jpg,3\nb.jpg,0\n",
    ids="a.jpg\nb.jpg\n",
):
    write(tmp_path / "image_ids.txt", ids)
    write(tmp_path / "class_labels.txt", labels)
    if sizes is not None:
        write(tmp_path / "image_sizes.txt", sizes)
    write(tmp_path / "localization.txt", loc)
    return tmp_path


# ----------------------------------------------------------------------------------------------- Choe et al.


def test_wsol_boxes_are_inclusive_and_become_exclusive(tmp_path):
    ann = read_wsol_metadata(wsol_folder(tmp_path))
    assert ann.ids == ["a.jpg", "b.jpg"]
    assert ann.labels.tolist() == [3, 0]
    assert ann.sizes == [(10, 8), (10, 10)]
    assert ann.boxes[0].tolist() == [[1.0, 2.0, 4.0, 5.0]]
    assert ann.boxes[1].tolist() == [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 7.0, 7.0]]


def test_wsol_metadata_round_trip(tmp_path):
    ann = Annotations(
        ["x/1.png", "y/2.png"],
        torch.tensor([4, 1]),
        [torch.tensor([[0.0, 1.0, 5.0, 6.0]]), torch.tensor([[2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 8.0, 7.0]])],
        [(8, 7), (8, 7)],
    )
    back = read_wsol_metadata(write_wsol_metadata(tmp_path / "meta", ann))
    assert back.ids == ann.ids and back.labels.tolist() == ann.labels.tolist() and back.sizes == ann.sizes
    assert all(torch.equal(a, b) for a, b in zip(back.boxes, ann.boxes))


@pytest.mark.parametrize(
    "files, where, message",
    [
        (dict(loc="a.jpg,1,2,3\nb.jpg,0,0,9,9\n"), "localization.txt:1", "expected"),
        (dict(loc="a.jpg,1,2,3,x\nb.jpg,0,0,9,9\n"), "localization.txt:1", "integers"),
        (dict(loc="a.jpg,1,2,3,4\nb.jpg,0,0,10,9\n"), "localization.txt:2", "outside the 10x10 image"),
        (dict(loc="a.jpg,3,2,1,4\nb.jpg,0,0,9,9\n"), "localization.txt:1", "reversed"),
        (dict(loc="a.jpg,1,2,3,4\nc.jpg,0,0,9,9\n"), "localization.txt:2", "'c.jpg' is not in image_ids.txt"),
        (dict(loc="a.jpg,1,2,3,4\n"), "localization.txt", "no entry for 1 image id"),
        (dict(labels="a.jpg,3\n"), "class_labels.txt", "no entry"),
        (dict(labels="a.jpg,3\nb.jpg,-1\n"), "class_labels.txt:2", "negative"),
        (dict(ids="a.jpg\nb.jpg\na.jpg\n"), "image_ids.txt:3", "repeats line 1"),
        (dict(sizes="a.jpg,10\nb.jpg,10,10\n"), "image_sizes.txt:1", "width,height"),
        (dict(loc="a.jpg,1,2,3,4\nb.jpg,m.png,\n"), "localization.txt:2", "mask line in a file of box"),
    ],
)
def test_wsol_errors_name_file_and_line(tmp_path, files, where, message):
    wsol_folder(tmp_path, **files)
    with pytest.raises(AnnotationError, match=message) as err:
        read_wsol_metadata(tmp_path)
    assert where in str(err.value)


def test_wsol_masks_and_ignore_regions(tmp_path):
    fg1 = np.zeros((4, 6), np.uint8)
    fg1[1:3, 1:3] = 255
    fg2 = np.zeros((4, 6), np.uint8)
    fg2[0, 5] = 255
    ign = np.zeros((4, 6), np.uint8)
    ign[0:3, 0:4] = 255
    for name, arr in (("m1.png", fg1), ("m2.png", fg2), ("ig.png", ign)):
        Image.fromarray(arr).save(tmp_path / name)
    wsol_folder(tmp_path, loc="a.jpg,m1.png,ig.png\na.jpg,m2.png,\nb.jpg,m2.png,\n", sizes=None)
    ann = read_wsol_metadata(tmp_path)
    assert ann.has_masks and not ann.has_boxes
    fg, ignore = load_mask(ann.masks[0], (4, 6))
    assert fg.numpy().tolist() == ((fg1 > 0) | (fg2 > 0)).tolist()
    assert ignore.numpy().tolist() == ((ign > 0) & ~((fg1 > 0) | (fg2 > 0))).tolist()  # ignore minus foreground
    assert ann.masks[1].ignore is None


def test_nearest_resize_samples_like_opencv_inter_nearest():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))).astype(np.float32)
        h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        assert np.array_equal(nearest_resize(src, (h, w)), cv2.resize(src, (w, h), interpolation=cv2.INTER_NEAREST))


# ----------------------------------------------------------------------------------------------- VOC / ImageNet


VOC = """<annotation><filename>{name}</filename><size><width>20</width><height>10</height><depth>3</depth></size>
<object><name>{cls}</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>{xmax}</xmax><ymax>10</ymax></bndbox></object>
<object><name>cat</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>6</xmax><ymax>6</ymax></bndbox></object>
<object><name>{cls}</name><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>
</annotation>"""


def test_voc_boxes_are_one_based_inclusive(tmp_path):
    write(tmp_path / "Annotations" / "im1.xml", VOC.format(name="im1.jpg", cls="dog", xmax=20))
    write(tmp_path / "Annotations" / "im2.xml", VOC.format(name="im2.jpg", cls="cat", xmax=4))
    ann = read_voc(tmp_path)
    assert ann.class_names == ["cat", "dog"] and ann.ids == ["im1.jpg", "im2.jpg"]
    assert ann.labels.tolist() == [1, 0]
    # the first object's class decides the label; all its boxes are kept
    assert ann.boxes[0].tolist() == [[0.0, 1.0, 20.0, 10.0], [2.0, 2.0, 4.0, 4.0]]
    assert ann.boxes[1].tolist() == [[0.0, 1.0, 4.0, 10.0], [4.0, 4.0, 6.0, 6.0], [2.0, 2.0, 4.0, 4.0]]
    assert ann.sizes == [(20, 10), (20, 10)]


def test_voc_box_outside_image_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.xml", VOC.format(name="bad.jpg", cls="dog", xmax=21))
    with pytest.raises(AnnotationError, match="outside the 20x10 image") as err:
        read_voc_xml(path)
    assert f"{path}:2" in str(err.value)


def test_voc_malformed_files(tmp_path):
    with pytest.raises(AnnotationError, match="not a readable XML"):
        read_voc_xml(write(tmp_path / "a.xml", "<annotation><object>"))
    with pytest.raises(AnnotationError, match="must be numbers"):
        read_voc_xml(write(tmp_path / "b.xml", VOC.format(name="b", cls="dog", xmax="x")))


# ----------------------------------------------------------------------------------------------- CUB-200-2011


def cub_root(tmp_path, boxes="1 10.0 20.0 30.5 40.0\n2 0 0 5 5\n3 1 1 2 2\n"):
    write(tmp_path / "images.txt", "1 001.A/a.jpg\n2 001.A/b.jpg\n3 002.B/c.jpg\n")
    write(tmp_path / "image_class_labels.txt", "1 1\n2 1\n3 2\n")
    write(tmp_path / "bounding_boxes.txt", boxes)
    write(tmp_path / "train_test_split.txt", "1 1\n2 0\n3 0\n")
    write(tmp_path / "classes.txt", "1 001.A\n2 002.B\n")
    return tmp_path


def test_cub_boxes_splits_and_zero_based_labels(tmp_path):
    root = cub_root(tmp_path)
    test = read_cub(root, "test")
    assert test.ids == ["001.A/b.jpg", "002.B/c.jpg"] and test.labels.tolist() == [0, 1]
    assert test.boxes[1].tolist() == [[1.0, 1.0, 3.0, 3.0]]
    train = read_cub(root, "train")
    assert train.boxes[0].tolist() == [[10.0, 20.0, 40.5, 60.0]]
    assert train.root == root / "images" and train.class_names == ["001.A", "002.B"]
    assert len(read_cub(root, None)) == 3


@pytest.mark.parametrize(
    "boxes, where",
    [
        ("1 10 20 30\n2 0 0 5 5\n3 1 1 2 2\n", ":1"),
        ("1 10 20 30 40\n2 0 0 -5 5\n3 1 1 2 2\n", ":2"),
        ("1 10 20 30 40\n2 0 0 5 5\n3 1 1 2 nan\n", ":3"),
        ("1 10 20 30 40\n2 0 0 5 5\n", "no entry for image id 3"),
    ],
)
def test_cub_errors_name_file_and_line(tmp_path, boxes, where):
    with pytest.raises(AnnotationError) as err:
        read_cub(cub_root(tmp_path, boxes), None)
    assert "bounding_boxes.txt" in str(err.value) and where in str(err.value)


# ----------------------------------------------------------------------------------------------- built-in, dispatch


def test_builtin_annotations_hold_the_dataset_boxes_and_masks():
    from camlens.data.builtin import BuiltinDataset

    ds = BuiltinDataset("test", num_images=4, image_size=32)
    ann = builtin_annotations(ds)
    assert ann.ids == ds.ids and ann.sizes == [(32, 32)] * 4
    for i in range(4):
        item = ds[i]
        assert ann.labels[i] == item["label"]
        assert torch.equal(ann.boxes[i][0], item["box"].double()) and torch.equal(ann.masks[i], item["mask"])


def test_find_annotations_recognizes_each_layout(tmp_path):
    wsol_folder(tmp_path / "meta" / "test")
    assert find_annotations(tmp_path / "meta", "test").ids == ["a.jpg", "b.jpg"]
    assert len(find_annotations(cub_root(tmp_path / "cub"), "test")) == 2
    write(tmp_path / "voc" / "x.xml", VOC.format(name="x.jpg", cls="dog", xmax=4))
    assert find_annotations(tmp_path / "voc").ids == ["x.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no annotations found"):
        find_annotations(tmp_path / "empty")

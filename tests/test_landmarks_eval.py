"""The landmark evaluator against hand-computed cases, and on the dlib 68-point files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.tools.evaluation.landmarks import AnnotatedFace, face_nme, five_points, match, nme, read_imglab


def _ibug(offset: float = 0.0) -> np.ndarray:
    """68 points: point i at (i, 2i), shifted by `offset`."""
    return np.column_stack([np.arange(68.0), 2 * np.arange(68.0)]) + offset


def test_five_points_by_hand() -> None:
    # eye centres: mean of 36..41 = 38.5, of 42..47 = 44.5; nose 30; mouth corners 48, 54 (y = 2x)
    expected = [[38.5, 77.0], [44.5, 89.0], [30.0, 60.0], [48.0, 96.0], [54.0, 108.0]]
    np.testing.assert_array_equal(five_points(_ibug()), expected)
    with pytest.raises(ValueError, match="68 x 2"):
        five_points(np.zeros((5, 2)))


def test_nme_by_hand() -> None:
    truth = np.array([[0.0, 0], [10, 0], [5, 5], [2, 9], [8, 9]])  # eyes 10 px apart
    assert nme(truth, truth) == 0.0
    assert nme(truth + [3, 4], truth) == pytest.approx(0.5)  # every point 5 px off
    shifted = truth.copy()
    shifted[2] += [0, 10]  # only the nose, 10 px: mean error 2 px
    assert nme(shifted, truth) == pytest.approx(0.2)


def test_match_is_one_to_one_by_highest_iou() -> None:
    truth = np.array([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]])
    found = np.array([[101.0, 101, 111, 111], [0, 0, 10, 9], [1, 1, 11, 11], [205, 205, 215, 215]])
    # face 0: IoU 0.9 with found[1], 0.68 with found[2]; face 1: 0.68 with found[0]; face 2: 25/175 with found[3]
    np.testing.assert_array_equal(match(truth, found, 0.4), [1, 0, -1])
    np.testing.assert_array_equal(match(truth, found, 0.1), [1, 0, 3])
    # two faces, one detection: it goes to the face it overlaps most
    np.testing.assert_array_equal(match(truth[:1].repeat(2, 0) + [[0, 0, 0, 0], [2, 0, 2, 0]], found[1:2], 0.4),
                                  [0, -1])
    np.testing.assert_array_equal(match(truth, np.zeros((0, 4)), 0.4), [-1, -1, -1])


def test_face_nme_marks_missed_faces() -> None:
    faces = [AnnotatedFace(np.array([0.0, 0, 50, 50]), five_points(_ibug())),
             AnnotatedFace(np.array([300.0, 300, 350, 350]), five_points(_ibug(300)))]
    # one detection on the first face, its points 1 px right of the truth; eyes (38.5, 77), (44.5, 89): 6 by 12
    points = (five_points(_ibug()) + [1, 0])[None]
    result = face_nme(faces, np.array([[1.0, 0, 51, 50]]), points, 0.4)
    assert result[0] == pytest.approx(1 / np.hypot(6, 12)) and np.isnan(result[1])


def test_read_imglab(tmp_path: Path) -> None:
    parts = "".join(f"<part name='{i:02d}' x='{i}' y='{2 * i}'/>" for i in range(68))
    (tmp_path / "faces.xml").write_text(
        "<?xml version='1.0'?><dataset><images>"
        f"<image file='a.jpg'><box top='10' left='20' width='30' height='40'>{parts}</box>"
        f"<box top='0' left='0' width='5' height='5' ignore='1'>{parts}</box>"
        "<box top='0' left='0' width='5' height='5'><part name='00' x='1' y='1'/></box></image>"
        "<image file='b.jpg'></image></images></dataset>")
    faces = read_imglab(tmp_path / "faces.xml")
    assert sorted(faces) == ["a.jpg", "b.jpg"] and faces["b.jpg"] == []
    [face] = faces["a.jpg"]
    np.testing.assert_array_equal(face.box, [20, 10, 50, 50])
    np.testing.assert_array_equal(face.points, five_points(_ibug()))


def test_dlib_files(data: Path) -> None:
    faces = [face for xml in sorted((data / "dlib_landmarks").glob("*_with_face_landmarks.xml"))
             for found in read_imglab(xml).values() for face in found]
    assert len(faces) == 43
    for face in faces:
        eye_left, eye_right, nose, mouth_left, mouth_right = face.points
        assert eye_left[0] < eye_right[0] and mouth_left[0] < mouth_right[0]  # ArcFace order: image's left first
        assert max(eye_left[1], eye_right[1]) < min(mouth_left[1], mouth_right[1])
        assert (face.points >= face.box[:2] - 5).all() and (face.points <= face.box[2:] + 5).all()
    assert face_nme(faces, np.array([f.box for f in faces]), np.array([f.points for f in faces]), 0.9).max() == 0.0

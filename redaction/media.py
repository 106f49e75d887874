"""ffmpeg as the decoder and encoder: probing a clip, reading raw frames, writing H.264 + AAC.

The ffmpeg build from ``imageio-ffmpeg`` has no ffprobe, so a clip is probed by reading what
``ffmpeg -i`` prints. Frames travel as raw YUV 4:2:0 over pipes (see ``redaction.frames``);
decoding and encoding run in their own processes (with their own threads), while reading and
writing the pipes happen on helper threads, so the Python process spends its time on detection.

Every file given to ffmpeg here came from a camera, a dock or a device: untrusted bytes. Some
formats ffmpeg would recognise in them open other files or URLs named inside (an HLS playlist's
segments, a concat list's entries, an SDP's streams), so a "clip" could make a worker read another
local file (or reach the network) and store what it read as the redacted copy of it. Each input
is therefore opened through :func:`media_input` only: demuxers limited to containers that never
follow a reference (``MEDIA_FORMATS``), protocols to ``file``, and the name given as an absolute
``file:`` path so it can never be read as an option or as another protocol's URL.
"""

from __future__ import annotations

import io
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

from redaction.frames import Frame

# Audio codecs an MP4 can carry as they are; anything else is re-encoded to AAC.
_MP4_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}


class MediaError(RuntimeError):
    """The clip could not be read or the redacted copy could not be written; the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    """What a clip holds, as far as redaction needs to know."""

    width: int
    height: int
    fps: Fraction
    duration: float | None
    video_codec: str
    audio_codec: str | None
    audio_rate: int | None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def frame_size(self) -> tuple[int, int]:
        """The size frames are handled at: odd sizes are padded by a pixel, as 4:2:0 needs even ones."""
        return self.width + self.width % 2, self.height + self.height % 2

    @property
    def expected_frames(self) -> int | None:
        return None if self.duration is None else round(self.duration * self.fps)


# The containers body-worn cameras and lone-worker devices record in (MP4/MOV/M4A, MPEG-TS, Matroska
# and WebM, AVI, Ogg/Opus, MP3, WAV, ADTS AAC, FLAC): none opens another file or URL named inside it.
MEDIA_FORMATS = "mov,mpegts,matroska,avi,ogg,mp3,wav,aac,flac"


def media_input(path: str | Path) -> list[str]:
    """The ffmpeg arguments that open one untrusted media file and nothing it names (see above)."""
    return [
        "-protocol_whitelist", "file", "-format_whitelist", MEDIA_FORMATS,
        "-i", f"file:{Path(path).resolve()}",
    ]  # fmt: skip


NOT_MEDIA = (
    "its format is not one of the media containers the service reads "
    "(a playlist or a list naming other files or addresses is never opened)"
)


def refused_format(ffmpeg_errors: str) -> str | None:
    """Why ffmpeg refused the input when the refusal was :func:`media_input`'s (else None)."""
    if "not on whitelist" in ffmpeg_errors:
        return NOT_MEDIA
    return None


def file_output(path: str | Path) -> str:
    """An output name ffmpeg cannot read as an option or a protocol's URL."""
    return f"file:{Path(path).resolve()}"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def rate_text(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def probe(path: str | Path, ffmpeg: str | None = None) -> VideoInfo:
    """Read a clip's first video stream and first audio stream from ``ffmpeg -i``."""
    if not Path(path).is_file():
        raise MediaError(f"no such file: {path}")
    proc = subprocess.run(
        [ffmpeg or ffmpeg_exe(), "-hide_banner", "-nostdin", *media_input(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    return parse_probe(proc.stderr)


def parse_probe(text: str) -> VideoInfo:
    """Parse the stream listing ``ffmpeg -i`` prints (kept apart from I/O so it can be tested)."""
    duration = None
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if m:
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    video = None
    audio = None
    rotation = 0.0
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if "Stream #" not in line:
            continue
        if video is None and ": Video: " in line and "attached pic" not in line:
            video = line
            for follow in lines[n + 1 : n + 12]:
                if "Stream #" in follow:
                    break
                r = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", follow)
                if r:
                    rotation = float(r.group(1))
        elif audio is None and ": Audio: " in line:
            audio = line
    if video is None:
        reason = refused_format(text) or (
            text.strip().splitlines()[-1] if text.strip() else "no output from ffmpeg"
        )
        raise MediaError(f"no video stream found ({reason})")
    size = re.search(r", (\d{2,5})x(\d{2,5})", video)
    if not size:
        raise MediaError(f"could not read the frame size from: {video.strip()}")
    width, height = int(size.group(1)), int(size.group(2))
    if round(abs(rotation)) % 180 == 90:
        width, height = height, width
    rate = re.search(r", (\d+(?:\.\d+)?) fps", video) or re.search(r", (\d+(?:\.\d+)?)k? tbr", video)
    if not rate:
        raise MediaError(f"could not read the frame rate from: {video.strip()}")
    fps = exact_rate(float(rate.group(1)))
    video_codec = re.search(r": Video: (\w+)", video)
    audio_codec = re.search(r": Audio: (\w+)", audio) if audio else None
    audio_rate = re.search(r", (\d+) Hz", audio) if audio else None
    return VideoInfo(
        width=width,
        height=height,
        fps=fps,
        duration=duration,
        video_codec=video_codec.group(1) if video_codec else "unknown",
        audio_codec=audio_codec.group(1) if audio_codec else None,
        audio_rate=int(audio_rate.group(1)) if audio_rate else None,
    )


def exact_rate(printed: float) -> Fraction:
    """The frame rate ffmpeg printed (rounded to 2 places) as an exact fraction: 29.97 is 30000/1001."""
    for base in range(1, 241):
        if abs(printed - base) < 0.005:
            return Fraction(base)
        ntsc = Fraction(base * 1000, 1001)
        if abs(printed - float(ntsc)) < 0.005:
            return ntsc
    return Fraction(printed).limit_denominator(1001)


class FrameReader:
    """Decodes a clip's first video stream to ``Frame``s, one new buffer per frame.

    ``prepare``, when given, is called on the reading thread with each frame in order, before the
    frame is handed over, and ``prepared()`` yields each frame with what it returned: per-frame
    work that needs nothing but the pixels (cut detection, a thumbnail) then runs beside the
    consumer's own instead of before it."""

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        ffmpeg: str | None = None,
        queue_frames: int = 8,
        prepare: Callable[[Frame], Any] | None = None,
    ) -> None:
        self.info = info
        self._prepare = prepare
        self.width, self.height = info.frame_size
        self._frame_bytes = self.width * self.height * 3 // 2
        self._errors = tempfile.TemporaryFile()
        cmd = [ffmpeg or ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *media_input(path)]
        cmd += ["-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough"]
        if (self.width, self.height) != (info.width, info.height):
            cmd += ["-vf", f"pad={self.width}:{self.height}"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "pipe:1"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._errors, bufsize=0)
        self._queue: queue.Queue[tuple[Frame, Any] | None | BaseException] = queue.Queue(
            maxsize=max(1, queue_frames)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="frame-reader", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        stdout = cast(io.BufferedReader, self._proc.stdout)
        assert stdout is not None
        try:
            while not self._stop.is_set():
                frame = Frame.empty(self.width, self.height)
                view = frame.buffer.data
                got = 0
                while got < self._frame_bytes:
                    n = stdout.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got == 0:
                    break
                if got < self._frame_bytes:
                    raise MediaError(f"decoder stopped mid-frame ({got} of {self._frame_bytes} bytes)")
                self._put((frame, self._prepare(frame) if self._prepare else None))
        except BaseException as exc:  # handed to the consuming thread
            self._put(exc)
            return
        self._put(None)

    def _put(self, item: tuple[Frame, Any] | None | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Frame]:
        for frame, _ in self.prepared():
            yield frame

    def prepared(self) -> Iterator[tuple[Frame, Any]]:
        """Each frame in order with what ``prepare`` returned for it (None without one)."""
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        code = self._proc.wait()
        if code != 0:
            raise MediaError(f"decoding failed (ffmpeg exit {code}): {_tail(self._errors)}")

    def close(self) -> None:
        self._stop.set()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._thread.join(timeout=5)
        if self._proc.stdout:
            self._proc.stdout.close()
        self._errors.close()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class EncodeOptions:
    """How the redacted copy is written."""

    crf: int = 20
    preset: str = "veryfast"
    audio_bitrate: str = "128k"
    keyframe_seconds: float = 1.0


def keyframe_args(fps: Fraction | float, seconds: float) -> list[str]:
    """A keyframe at least every ``seconds`` of video. The player seeks to the keyframe at or before
    the time asked and decodes forward from it, fetching every byte in between; x264's own limit
    (250 frames: 8.3 s at 30 fps) made a seek in a redacted copy, the copy the player shows first,
    fetch and decode up to that much video before its frame could be shown."""
    return ["-g", str(max(1, round(float(fps) * seconds)))]


class FrameWriter:
    """Encodes ``Frame``s to an H.264 (yuv420p) MP4, taking the sound from the source clip.

    The sound is copied as it is unless an audio filter is given, in which case it is filtered
    and encoded to AAC. Global metadata (which may hold a location) is not carried over.
    """

    def __init__(
        self,
        dst: str | Path,
        info: VideoInfo,
        source: str | Path,
        options: EncodeOptions,
        audio_filter: str | None = None,
        ffmpeg: str | None = None,
        queue_frames: int = 8,
    ) -> None:
        self._errors = tempfile.TemporaryFile()
        cmd = [ffmpeg or ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        width, height = info.frame_size
        cmd += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}"]
        cmd += ["-r", rate_text(info.fps), "-protocol_whitelist", "pipe", "-i", "pipe:0"]
        if info.has_audio:
            cmd += [*media_input(source), "-map", "0:v:0", "-map", "1:a:0"]
            if audio_filter:
                cmd += ["-af", audio_filter, "-c:a", "aac", "-b:a", options.audio_bitrate]
            elif info.audio_codec in _MP4_AUDIO:
                cmd += ["-c:a", "copy"]
            else:
                cmd += ["-c:a", "aac", "-b:a", options.audio_bitrate]
        else:
            cmd += ["-map", "0:v:0"]
        cmd += ["-c:v", "libx264", "-preset", options.preset, "-crf", str(options.crf), "-pix_fmt", "yuv420p"]
        cmd += keyframe_args(info.fps, options.keyframe_seconds)
        cmd += ["-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", file_output(dst)]
        self.command = cmd
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._errors, bufsize=0)
        self._queue: queue.Queue[tuple[Frame, Callable[[Frame], None] | None] | None] = queue.Queue(
            maxsize=max(1, queue_frames)
        )
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name="frame-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def _pump(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                frame, finish = item
                if finish is not None:
                    finish(frame)
                stdin.write(frame.buffer.data)
        except BaseException as exc:
            self._failure = exc
            # Keep draining so the producer never blocks on a dead encoder.
            while self._queue.get() is not None:
                pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def write(self, frame: Frame, finish: Callable[[Frame], None] | None = None) -> None:
        """Queue a frame for the encoder; ``finish``, when given, is done to it on the writing
        thread just before it is encoded (drawing its masks there keeps that pixel work beside
        the caller's, not in its way)."""
        if self._failure is not None:
            raise MediaError(f"encoding failed: {_tail(self._errors)}") from self._failure
        self._queue.put((frame, finish))

    def finish(self) -> None:
        """Flush and wait for the encoder; raises if it failed."""
        self._queue.put(None)
        self._thread.join()
        code = self._proc.wait()
        self._closed = True
        if code != 0 or self._failure is not None:
            raise MediaError(f"encoding failed (ffmpeg exit {code}): {_tail(self._errors)}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
        self._closed = True

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed:
            self.abort()
        self._errors.close()


def _tail(f: IO[bytes], limit: int = 2000) -> str:
    try:
        f.seek(0)
        text = f.read().decode(errors="replace")
    except (OSError, ValueError):
        return ""
    return text.strip()[-limit:] or "no message"

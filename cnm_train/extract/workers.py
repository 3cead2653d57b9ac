"""Videos -> a stream of their sampled frames, decoded in worker processes (or a thread) while the model runs.

Decoding one video gives ``Frames`` messages (its rows in order, a few at a time, already resized and
cropped: the small uint8 crops travel, not the decoded frames) and then ``Done``, or a ``VideoError`` at any
point. ``Decoder`` runs that for a list of videos ahead of the model, and the model's process takes the
messages as they come (``get``): a thread of the model's process reads them from the workers into a
bounded queue, so decoding goes on while the model runs and memory stays bounded.

Each worker process (started with ``spawn``: no fork of a process that holds a model) has a pipe of its own
and one video at a time, so the model's process knows which video a worker holds. A worker that dies (FFmpeg
crashed on a file, or the kernel killed it) ends that video as ``decoder_crashed`` and another worker is
started; the run goes on. Workers import no torch, so that they start fast.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Union

import numpy as np

from cnm_train.extract.decode import Sampling, frames_at, probe
from cnm_train.extract.errors import VideoError
from cnm_train.extract.preprocess import ClipPreprocessing


@dataclass(frozen=True)
class VideoJob:
    video: str  # the id its features are stored under
    path: str


@dataclass(frozen=True)
class Frames:
    pixels: np.ndarray  # [n, height, width, 3] uint8: the video's next n rows, resized and cropped


@dataclass(frozen=True)
class Done:
    duration: float  # seconds
    rows: int  # how many rows the video's Frames held in all


Message = Union[Frames, Done, VideoError]


@dataclass(frozen=True)
class DecodeOptions:
    sampling: Sampling
    preprocessing: ClipPreprocessing
    chunk_frames: int = 16  # rows a Frames message holds at most


def video_messages(job: VideoJob, options: DecodeOptions) -> Iterator[Message]:
    """One video's messages: its Frames then Done, or a VideoError (perhaps after some Frames)."""
    try:
        if not os.path.exists(job.path) or os.path.isdir(job.path):
            raise VideoError("missing_file", f"{job.path}: no such file")
        timing = probe(job.path)
        if timing.duration > options.sampling.max_duration:
            raise VideoError("too_long", f"{job.path}: {timing.duration:.1f} s long, more than --max-duration "
                                         f"{options.sampling.max_duration:g} s")
        instants = options.sampling.instants(timing)
        rows: list[np.ndarray] = []
        last_frame, last_pixels = None, None
        for frame in frames_at(job.path, timing.start + instants):
            if frame is not last_frame:  # a frame on screen at several instants is prepared once
                last_frame, last_pixels = frame, options.preprocessing.resize_and_crop(frame.to_image())
            rows.append(last_pixels)
            if len(rows) == options.chunk_frames:
                yield Frames(np.stack(rows))
                rows = []
        if rows:
            yield Frames(np.stack(rows))
        yield Done(timing.duration, len(instants))
    except VideoError as error:
        yield error
    except Exception as error:  # whatever else FFmpeg or Pillow raise on a strange file ends this video only
        yield VideoError("undecodable", f"{job.path}: {type(error).__name__}: {error}")


def _serve(connection: Connection, options: DecodeOptions) -> None:
    """A worker process: decode each video the pipe brings until it brings None or closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the model's process to handle
    try:
        while (job := connection.recv()) is not None:
            for message in video_messages(job, options):
                connection.send(message)
    except (EOFError, OSError):  # the model's process is gone
        pass


class _Worker:
    def __init__(self, context, options: DecodeOptions):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, options), daemon=True)
        self.process.start()
        theirs.close()

    def stop(self, gently: bool) -> None:
        if gently:
            try:
                self.connection.send(None)
            except OSError:
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.connection.close()


def _in_this_process(jobs: list[VideoJob], options: DecodeOptions) -> Iterator[tuple[VideoJob, Message]]:
    for job in jobs:
        for message in video_messages(job, options):
            yield job, message


def _in_workers(jobs: list[VideoJob], options: DecodeOptions, processes: int, started: list[_Worker]
                ) -> Iterator[tuple[VideoJob, Message]]:
    """Each worker holds one video at a time; its messages come in order, videos interleave. Every worker
    started is appended to ``started``, so that another thread can kill them."""
    context = multiprocessing.get_context("spawn")

    def start() -> _Worker:
        started.append(_Worker(context, options))
        return started[-1]

    pending = deque(jobs)
    idle = [start() for _ in range(min(processes, len(jobs)))]
    busy: dict[Connection, tuple[_Worker, VideoJob]] = {}
    finished = False
    try:
        while pending or busy:
            while idle and pending:
                worker, job = idle.pop(), pending.popleft()
                busy[worker.connection] = (worker, job)
                try:
                    worker.connection.send(job)
                except OSError:  # it died while idle: the next read says so
                    pass
            for connection in wait(list(busy)):
                worker, job = busy[connection]
                try:
                    message = connection.recv()
                except Exception:  # EOF, or half a message: the worker died holding this video
                    worker.stop(gently=False)
                    message = VideoError("decoder_crashed", f"{job.path}: the process decoding it died "
                                                            f"(exit code {worker.process.exitcode})")
                    worker = start()
                yield job, message
                if not isinstance(message, Frames):
                    del busy[connection]
                    idle.append(worker)
        finished = True
    finally:
        for worker in idle + [worker for worker, _ in busy.values()]:
            worker.stop(gently=finished)


_END = object()
STOP_WAIT_S = 5.0  # how long close() waits for the reading thread once the workers are killed


class Decoder:
    """``get()``: the next ``(job, message)`` of any video, None when none is ready yet (``block=False``), or
    ``Decoder.END`` after the last. ``processes=0`` decodes in a thread of this process. Use as a context
    manager (or ``close()``): leaving early stops the workers."""

    END = _END

    def __init__(self, jobs: list[VideoJob], options: DecodeOptions, processes: int, ahead: int = 8):
        """``ahead``: messages kept ready for the model at most (each ``chunk_frames`` rows)."""
        self._workers: list[_Worker] = []
        self._messages = (_in_workers(jobs, options, processes, self._workers) if processes
                          else _in_this_process(jobs, options))
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="cnm-features decoder", daemon=True)
        self._thread.start()

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self) -> None:
        try:
            for item in self._messages:
                if not self._put(item):
                    return
        except BaseException as error:  # a fault of this code, not of a video: the model's process raises it
            self._failure = error
        finally:
            self._messages.close()  # stops the workers
        self._put(_END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def get(self, block: bool = True):
        try:
            item = self._ready.get(block=block)
        except queue.Empty:
            return None
        if item is _END and self._failure is not None:
            raise RuntimeError(f"decoding failed: {self._failure!r}") from self._failure
        return item

    def close(self) -> None:
        """Stop decoding. Left early (an exception, Ctrl-C), the workers are killed from here, for the reading
        thread may wait on one that FFmpeg holds up; a thread held up in FFmpeg itself is left behind (it
        ends with the process)."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        for worker in self._workers:
            worker.process.kill()
        self._thread.join(timeout=STOP_WAIT_S)

"""cnm-features on small videos encoded here (several codecs and containers, a variable frame rate, a corrupt
file, an audio-only file) with a tiny random CLIP saved as a real checkpoint is."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
from click.testing import CliRunner  # noqa: E402
from synthetic_videos import (  # noqa: E402
    av, index_of, level, regular_times, write_audio_only, write_tiny_clip, write_video,
)

from conftest import REPO  # noqa: E402
from cnm_runtime.archive import FeatureArchive  # noqa: E402
from cnm_runtime.datasets.resumable import ResumableArchive  # noqa: E402
from cnm_train.extract.backbone import ClipBackbone  # noqa: E402
from cnm_train.extract.cli import main  # noqa: E402
from cnm_train.extract.decode import Sampling  # noqa: E402
from cnm_train.extract.errors import VIDEO_ERROR_CODES, VideoError  # noqa: E402
from cnm_train.extract.extractor import ExtractOptions, extract  # noqa: E402
from cnm_train.extract.preprocess import ClipPreprocessing  # noqa: E402
from cnm_train.extract.workers import Decoder, DecodeOptions, Done, Frames, VideoJob, video_messages  # noqa: E402

FORMATS = [("mpeg4", "yuv420p", "mp4"), ("libx264", "yuv420p", "mkv"), ("libvpx-vp9", "yuv420p", "webm"),
           ("mjpeg", "yuvj420p", "avi")]
DECODED_CLOSE = dict(rtol=1e-5, atol=1e-5)  # the same frames in other batches: float32 rounding apart


def has_encoder(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


def vfr_times(count: int = 30, seed: int = 0) -> list[float]:
    """Frame times with gaps of 30, 100 and 200 ms in a random order: a variable frame rate."""
    chooser, times = random.Random(seed), [0.0]
    for _ in range(count - 1):
        times.append(round(times[-1] + chooser.choice([0.03, 0.1, 0.2]), 3))
    return times


def shown_at(frame_times: list[float], instant: float) -> int:
    """The index of the frame on screen at ``instant`` seconds after the first frame."""
    return max(i for i, t in enumerate(frame_times) if t - frame_times[0] <= instant + 1e-9)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def backbone(tiny_clip) -> ClipBackbone:
    return ClipBackbone(tiny_clip, "cpu")


def decoded(path: Path, sampling: Sampling, preprocessing: ClipPreprocessing, chunk: int = 5):
    """(all rows' pixels, Done) of one video through the decoding path of the workers."""
    messages = list(video_messages(VideoJob(path.stem, str(path)), DecodeOptions(sampling, preprocessing, chunk)))
    errors = [m for m in messages if isinstance(m, VideoError)]
    assert not errors, errors
    assert all(len(m.pixels) <= chunk for m in messages[:-1])
    return np.concatenate([m.pixels for m in messages[:-1]]), messages[-1]


# --- preprocessing --------------------------------------------------------------------------------

REAL_CHECKPOINT_CONFIG = {  # openai/clip-vit-base-patch32's preprocessor_config.json: ints for sizes
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}


@pytest.mark.parametrize("config", [
    {}, REAL_CHECKPOINT_CONFIG,
    {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 36}, "resample": 2,
     "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4]},
    {"size": {"height": 50, "width": 30}, "crop_size": 28, "do_normalize": False},
], ids=["defaults", "vit-b-32", "shortest-edge", "height-width"])
def test_preprocessing_equals_transformers_clip_processor(config, tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    reference = CLIPImageProcessorPil.from_pretrained(tmp_path)
    ours = ClipPreprocessing.from_config(config, image_size=224)
    rng = np.random.default_rng(0)
    for height, width in [(64, 64), (360, 640), (97, 31), (225, 224)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = reference(images=image, return_tensors="np")["pixel_values"]
        got = ours.normalize(ours.resize_and_crop(image)[None])
        assert got.dtype == np.float32 and np.array_equal(got, expected), (height, width)


@pytest.mark.parametrize("config", [{"size": 200, "crop_size": 224}, {"size": {"longest_edge": 224}}])
def test_preprocessing_that_would_pad_or_is_unknown_is_refused(config):
    with pytest.raises(ValueError, match="not supported"):
        ClipPreprocessing.from_config(config, image_size=224, where="x/preprocessor_config.json")


# --- decoding and sampling -----------------------------------------------------------------------

@pytest.mark.parametrize("codec, pix_fmt, extension", FORMATS)
def test_rows_are_the_frames_on_screen_at_each_instant(codec, pix_fmt, extension, tmp_path, backbone):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV has no {codec} encoder")
    times = regular_times(3, 10)
    path = write_video(tmp_path / f"v.{extension}", times, codec, pix_fmt)
    pixels, done = decoded(path, Sampling(fps=4), backbone.preprocessing)
    assert done.duration == pytest.approx(3.0, abs=1e-6)
    assert done.rows == len(pixels) == 12  # duration x fps
    assert pixels.shape[1:] == (32, 32, 3) and pixels.dtype == np.uint8
    assert [index_of(p) for p in pixels] == [shown_at(times, k / 4) for k in range(12)]


def test_variable_frame_rate_and_a_late_first_frame(tmp_path, backbone):
    times = [0.5 + t for t in vfr_times()]
    path = write_video(tmp_path / "vfr.mkv", times, "libx264" if has_encoder("libx264") else "mpeg4")
    pixels, done = decoded(path, Sampling(fps=10), backbone.preprocessing)
    span = times[-1] - times[0]
    assert span < done.duration <= span + 0.2
    assert abs(len(pixels) - done.duration * 10) <= 1 and done.rows == len(pixels)
    assert [index_of(p) for p in pixels] == [shown_at(times, k / 10) for k in range(len(pixels))]


def test_a_fixed_number_of_frames_is_spread_evenly(tmp_path, backbone):
    path = write_video(tmp_path / "v.mp4", regular_times(2, 10))
    pixels, done = decoded(path, Sampling(frames=5), backbone.preprocessing)
    assert done.rows == 5 and [index_of(p) for p in pixels] == [2, 6, 10, 14, 18]  # the middle of each fifth


def test_every_nth_frame_follows_the_frames_not_the_clock(tmp_path, backbone):
    times = vfr_times(25)
    path = write_video(tmp_path / "vfr.mp4", times)
    pixels, done = decoded(path, Sampling(every=8), backbone.preprocessing)
    assert done.rows == 4 and [index_of(p) for p in pixels] == [0, 8, 16, 24]


@pytest.mark.parametrize("choice", [{}, {"fps": 1, "every": 8}, {"fps": 0}, {"frames": 0}])
def test_sampling_is_one_positive_choice(choice):
    with pytest.raises(ValueError, match="give one of"):
        Sampling(**choice)


def test_sampling_faster_than_the_video_repeats_frames(tmp_path, backbone):
    path = write_video(tmp_path / "v.mp4", regular_times(1, 5))
    pixels, _ = decoded(path, Sampling(fps=10), backbone.preprocessing)
    assert [index_of(p) for p in pixels] == [i // 2 for i in range(10)]


def write_bad_files(folder: Path) -> dict[str, str]:
    """Files that give no features, by name, and the code each must get."""
    good = write_video(folder / "good.mp4", regular_times(2, 10)).read_bytes()
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "half.mp4").write_bytes(good[: len(good) // 2])  # cut before its index (moov)
    write_audio_only(folder / "audio.mp4")
    write_audio_only(folder / "song.mp4", cover=True)
    with av.open(str(folder / "empty.avi"), "w") as container:  # a video stream with no frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 64
        container.start_encoding()
    (folder / "good.mp4").unlink()
    return {"noise": "undecodable", "half": "undecodable", "audio": "no_video_stream", "song": "no_video_stream",
            "empty": "empty_video"}


def test_bad_files_are_errors_with_their_codes(tmp_path, backbone):
    expected = write_bad_files(tmp_path) | {"missing": "missing_file", "long": "too_long"}
    write_video(tmp_path / "long.mp4", regular_times(2, 10))
    options = DecodeOptions(Sampling(fps=1, max_duration=1.5), backbone.preprocessing)
    for video, code in expected.items():
        path = next(tmp_path.glob(f"{video}.*"), tmp_path / f"{video}.mp4")
        (message,) = video_messages(VideoJob(video, str(path)), options)
        assert isinstance(message, VideoError) and message.code == code, (video, message)
        assert str(path) in message.message and code in VIDEO_ERROR_CODES


# --- the extraction loop --------------------------------------------------------------------------

def mean_level(frames: np.ndarray) -> np.ndarray:
    """A stand-in backbone whose one feature is a frame's mean level: it says which frame each row is."""
    return frames.mean(axis=(1, 2, 3), dtype=np.float64)[:, None].astype(np.float32)


@pytest.mark.parametrize("processes", [0, 2])
def test_batches_mix_videos_and_keep_each_ones_rows_in_order(processes, tmp_path, backbone):
    videos = {f"v{i}": write_video(tmp_path / f"v{i}.mp4", regular_times(1 + i / 2, 10)) for i in range(4)}
    stored, failed, batches = {}, [], []

    def embed(frames):
        batches.append(len(frames))
        return mean_level(frames)

    jobs = [VideoJob(video, str(path)) for video, path in videos.items()] + [VideoJob("gone", str(tmp_path / "x.mp4"))]
    options = ExtractOptions(DecodeOptions(Sampling(fps=4), backbone.preprocessing, chunk_frames=3), batch_size=7,
                             processes=processes)
    tally = extract(jobs, embed, lambda job, features, duration: stored.__setitem__(job.video, (features, duration)),
                    lambda job, error: failed.append((job.video, error.code)), options)
    assert failed == [("gone", "missing_file")] and tally.stored == 4
    for i, video in enumerate(videos):
        features, duration = stored[video]
        times = regular_times(1 + i / 2, 10)
        assert duration == pytest.approx(len(times) / 10)
        assert len(features) == round(duration * 4)  # whole numbers of rows here
        assert [index_of(row) for row in features] == [shown_at(times, k / 4) for k in range(len(features))]
    assert max(batches) <= 7 and sum(batches) == tally.frames == sum(len(f) for f, _ in stored.values())


def test_non_finite_features_are_an_error_not_a_row(tmp_path, backbone):
    write_video(tmp_path / "v.mp4", regular_times(1, 10))
    failed = []
    extract([VideoJob("v", str(tmp_path / "v.mp4"))], lambda frames: np.full((len(frames), 4), np.nan, np.float32),
            lambda *stored: pytest.fail("stored NaN features"), lambda job, error: failed.append(error.code),
            ExtractOptions(DecodeOptions(Sampling(fps=2), backbone.preprocessing), processes=0))
    assert failed == ["non_finite_features"]


def test_a_decoding_process_that_dies_fails_its_video_and_the_run_goes_on(tmp_path, backbone):
    """The first video is a pipe nobody writes to: its worker waits in FFmpeg's open until it is killed."""
    import multiprocessing

    os.mkfifo(tmp_path / "stuck.mp4")
    write_video(tmp_path / "next.mp4", regular_times(1, 10))
    jobs = [VideoJob("stuck", str(tmp_path / "stuck.mp4")), VideoJob("next", str(tmp_path / "next.mp4"))]
    messages = []
    with Decoder(jobs, DecodeOptions(Sampling(fps=2), backbone.preprocessing), processes=1) as decoder:
        deadline = time.monotonic() + 60
        while not multiprocessing.active_children():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # let it take the stuck video
        multiprocessing.active_children()[0].kill()
        while (item := decoder.get(block=False)) is not Decoder.END:
            assert time.monotonic() < deadline, messages
            if item is None:
                time.sleep(0.05)
                continue
            messages.append((item[0].video, item[1]))
    (stuck, crash), *rest = messages
    assert stuck == "stuck" and isinstance(crash, VideoError) and crash.code == "decoder_crashed"
    assert [video for video, _ in rest] == ["next"] * len(rest) and isinstance(rest[-1][1], Done)
    assert sum(len(m.pixels) for _, m in rest if isinstance(m, Frames)) == rest[-1][1].rows == 2


# --- cnm-features ---------------------------------------------------------------------------------

def write_folder(folder: Path) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Good videos of each format (and a variable frame rate one), bad files and a file that is not a video:
    the good ones' frame times and the bad ones' error codes, by video id."""
    folder.mkdir()
    videos = {}
    for codec, pix_fmt, extension in FORMATS:
        if has_encoder(codec):
            videos[codec.replace("-", "_")] = regular_times(2 + len(videos) / 2, 10)
            write_video(folder / f"{codec.replace('-', '_')}.{extension}", videos[codec.replace("-", "_")], codec,
                        pix_fmt)
    videos["vfr"] = vfr_times()
    write_video(folder / "vfr.mp4", videos["vfr"])
    bad = write_bad_files(folder)
    (folder / "notes.txt").write_text("not a video")
    return videos, bad


def run_cli(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def archive_contents(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    with FeatureArchive(path) as archive:  # the reader cnm-run and cnm-train use
        return {video: (stored.features, stored.duration)
                for video, stored in ((video, archive.load(video)) for video in archive.videos())}


def test_cli_writes_the_archive_cnm_run_reads_and_error_records(tmp_path, tiny_clip, backbone):
    videos, bad = write_folder(tmp_path / "videos")
    out, errors = tmp_path / "features.hdf5", tmp_path / "errors.jsonl"
    metrics = tmp_path / "metrics.json"
    result = run_cli([tmp_path / "videos", "-o", out, "--weights", tiny_clip, "--fps", 4, "--errors", errors,
                      "--workers", 0, "--metrics", metrics])
    assert result.exit_code == 1, result.output  # five bad files, more than --max-errors 0
    counts = json.loads(metrics.read_text())
    assert counts["written"] == len(videos) and counts["errors"] == {"empty_video": 1, "no_video_stream": 2,
                                                                     "undecodable": 2}
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert {(r["video"], r["code"]) for r in records} == set(bad.items())
    assert all(set(r) == {"video", "path", "code", "message"} for r in records)

    contents = archive_contents(out)
    assert set(contents) == set(videos)
    assert counts["frames"] == sum(len(features) for features, _ in contents.values())
    for video, times in videos.items():
        features, duration = contents[video]
        assert features.dtype == np.float32 and features.shape[1] == backbone.dim == 16
        assert duration > times[-1] - times[0]
        assert abs(len(features) - duration * 4) <= 1  # rows = duration x fps, within one
        path = next((tmp_path / "videos").glob(f"{video}.*"))
        pixels, _ = decoded(path, Sampling(fps=4), backbone.preprocessing)
        np.testing.assert_allclose(features, backbone.embed(pixels), **DECODED_CLOSE)  # rows in frame order

    again = run_cli([tmp_path / "videos", "-o", out, "--weights", tiny_clip, "--fps", 4, "--errors", errors,
                     "--workers", 0, "--max-errors", 5])
    assert again.exit_code == 0, again.output
    assert f"{len(videos) + 5} videos, {len(videos)} already in" in again.output  # only the bad ones tried again
    other = run_cli([tmp_path / "videos", "-o", out, "--weights", tiny_clip, "--fps", 2])
    assert other.exit_code == 1 and "fps=4.0, this run asks for 2.0" in other.output


def test_one_or_several_decoding_processes_give_the_same_features(tmp_path, tiny_clip):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        write_video(folder / f"v{i}.mp4", regular_times(1 + i / 2, 10))
    archives = []
    for workers in (0, 1, 3):
        out = tmp_path / f"w{workers}.hdf5"
        result = run_cli([folder, "-o", out, "--weights", tiny_clip, "--fps", 5, "--workers", workers,
                          "--batch-size", 6])
        assert result.exit_code == 0, result.output
        archives.append(archive_contents(out))
    for contents in archives[1:]:
        assert set(contents) == set(archives[0]) == {f"v{i}" for i in range(4)}
        for video, (features, duration) in contents.items():
            np.testing.assert_allclose(features, archives[0][video][0], **DECODED_CLOSE)
            assert duration == archives[0][video][1]


def test_a_second_run_on_the_same_output_fails_at_once(tmp_path, tiny_clip):
    write_video(tmp_path / "v.mp4", regular_times(1, 10))
    out = tmp_path / "features.hdf5"
    with ResumableArchive(out):  # what a first run holds while it writes
        result = run_cli([tmp_path / "v.mp4", "-o", out, "--weights", tiny_clip])
    assert result.exit_code == 1 and "features.hdf5.lock is in use by another run" in result.output
    assert not out.exists()


def test_a_killed_run_leaves_a_readable_archive_and_the_same_command_finishes_it(tmp_path, tiny_clip):
    """SIGKILL while the last video holds the run up (a pipe nobody writes to, opened by FFmpeg): the archive is
    the last whole one, the videos finished since are kept, and the same command again makes only the rest."""
    folder = tmp_path / "videos"
    folder.mkdir()
    times = {name: regular_times(1 + i / 2, 10) for i, name in enumerate(["a", "b", "c", "d"])}
    for name in "abc":
        write_video(folder / f"{name}.mp4", times[name])
    os.mkfifo(folder / "d.mp4")
    out = tmp_path / "features.hdf5"
    command = [sys.executable, "-m", "cnm_train.extract", *(folder / f"{n}.mp4" for n in "abcd"), "-o", out,
               "--weights", tiny_clip, "--fps", 4, "--workers", 0]
    first = run_cli([folder / "a.mp4", "-o", out, "--weights", tiny_clip, "--fps", 4, "--workers", 0])
    assert first.exit_code == 0, first.output

    process = subprocess.Popen([str(a) for a in command], cwd=REPO, stderr=subprocess.PIPE)
    parts = tmp_path / "features.hdf5.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.npz"))) < 2:  # b and c are done; d is stuck in FFmpeg's open
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert set(archive_contents(out)) == {"a"}  # the archive before the run, whole

    (folder / "d.mp4").unlink()
    write_video(folder / "d.mp4", times["d"])
    resumed = subprocess.run([str(a) for a in command], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 videos, 3 already in" in resumed.stderr
    assert not parts.exists()
    contents = archive_contents(out)
    assert set(contents) == set("abcd")

    fresh = tmp_path / "fresh.hdf5"
    assert run_cli([*(folder / f"{n}.mp4" for n in "abcd"), "-o", fresh, "--weights", tiny_clip, "--fps", 4,
                    "--workers", 0]).exit_code == 0
    for video, (features, duration) in archive_contents(fresh).items():
        np.testing.assert_allclose(contents[video][0], features, **DECODED_CLOSE)
        assert contents[video][1] == duration


def test_ctrl_c_keeps_what_is_made_and_stops_the_decoding_processes(tmp_path, tiny_clip):
    """Ctrl-C while a decoding process is held up (by a pipe nobody writes to): status 130 at once, the
    finished videos folded into the archive, no process left behind."""
    for name in "ab":
        write_video(tmp_path / f"{name}.mp4", regular_times(1, 10))
    os.mkfifo(tmp_path / "stuck.mp4")
    out = tmp_path / "features.hdf5"
    ctrl_c_raises = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a terminal
    process = subprocess.Popen(
        [sys.executable, "-c", ctrl_c_raises + "from cnm_train.extract.cli import main; main()",
         *(str(tmp_path / f"{name}.mp4") for name in ("a", "b", "stuck")), "-o", str(out), "--weights",
         str(tiny_clip), "--fps", "4", "--workers", "1"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("features.hdf5.parts/*.npz"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    workers = [int(pid) for task in Path(f"/proc/{process.pid}/task").iterdir()
               for pid in (task / "children").read_text().split()]
    assert workers  # the decoding process (and multiprocessing's resource tracker), children of a thread
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and set(archive_contents(out)) == {"a", "b"}
    assert not (tmp_path / "features.hdf5.parts").exists()
    while any(map(running, workers)):  # multiprocessing's resource tracker takes a moment to see its EOF
        assert time.monotonic() < deadline, [pid for pid in workers if running(pid)]
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie left for init to reap does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_output_that_is_an_input_or_another_output_is_refused(tmp_path, tiny_clip):
    video = write_video(tmp_path / "v.mp4", regular_times(1, 10))
    before = video.read_bytes()
    for args in (["-o", video], ["-o", tmp_path / "f.hdf5", "--errors", video],
                 ["-o", tmp_path / "f.hdf5", "--errors", tmp_path / "e", "--metrics", tmp_path / "e"]):
        result = run_cli([video, "--weights", tiny_clip, *args])
        assert result.exit_code == 2 and "is the same file as" in result.output, result.output
    assert video.read_bytes() == before and not (tmp_path / "f.hdf5").exists()


def test_list_files_and_duplicate_ids(tmp_path, tiny_clip):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write_video(tmp_path / "one" / "v.mp4", regular_times(1, 10))
    write_video(tmp_path / "two" / "v.mkv", regular_times(1, 10))
    listing = tmp_path / "videos.txt"
    listing.write_text("# two videos named v, and one that is not there\none/v.mp4\n\ntwo/v.mkv\nthree/w.mp4\n")
    errors = tmp_path / "errors.jsonl"
    result = run_cli(["--list", listing, "-o", tmp_path / "f.hdf5", "--weights", tiny_clip, "--errors", errors,
                      "--workers", 0, "--max-errors", 2])
    assert result.exit_code == 0, result.output
    records = {r["video"]: r for r in map(json.loads, errors.read_text().splitlines())}
    assert records["v"]["code"] == "duplicate_video" and records["v"]["path"].endswith("two/v.mkv")
    assert records["w"]["code"] == "missing_file"
    assert set(archive_contents(tmp_path / "f.hdf5")) == {"v"}


def test_a_checkpoint_that_is_not_a_whole_clip_vision_model_is_refused(tmp_path, tiny_clip):
    """Weights transformers would have to start at random (here: no projection) would give random features."""
    from transformers import CLIPVisionModel

    CLIPVisionModel.from_pretrained(tiny_clip).save_pretrained(tmp_path / "no-projection")
    with pytest.raises(ValueError, match="lacks 1 weights of a CLIP vision model.*visual_projection.weight"):
        ClipBackbone(tmp_path / "no-projection", "cpu")
    with pytest.raises(ValueError, match="no such folder"):
        ClipBackbone(tmp_path / "nowhere", "cpu")


def test_a_whole_clip_checkpoint_gives_its_image_features(tmp_path):
    """What users download (openai/clip-vit-base-patch32) is a CLIPModel, text half included."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, projection_dim=16)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    clip.save_pretrained(tmp_path / "clip")
    backbone = ClipBackbone(tmp_path / "clip", "cpu")
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        pixels = torch.from_numpy(backbone.preprocessing.normalize(frames))
        expected = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output).numpy()
    assert backbone.dim == 16
    np.testing.assert_allclose(backbone.embed(frames), expected, **DECODED_CLOSE)


def test_features_match_the_clip_model_run_directly(tmp_path, tiny_clip, backbone):
    """The backbone is transformers' own model: the rows equal its image_embeds for CLIP's processor's pixels."""
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    frames = np.stack([np.full((48, 80, 3), level(i), np.uint8) for i in range(3)])
    model = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip)
    pixels = processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds.numpy()
    crops = np.stack([backbone.preprocessing.resize_and_crop(Image.fromarray(f)) for f in frames])
    np.testing.assert_allclose(backbone.embed(crops), expected, **DECODED_CLOSE)


# --- end to end -----------------------------------------------------------------------------------

def test_videos_to_features_to_training_to_onnx_to_grounding(tmp_path, tiny_clip):
    """Synthetic videos -> cnm-features -> cnm-train (tiny) -> cnm-export -> cnm-run, each through its command."""
    pytest.importorskip("onnx")
    from test_train import SENTENCES, WORDS, tiny_config

    from conftest import write_glove
    from cnm_export.cli import main as export_main
    from cnm_runtime.cli import main as run_main
    from cnm_train.cli import main as train_main

    folder = tmp_path / "videos"
    folder.mkdir()
    annotations = {"train": [], "test": []}
    for v in range(8):
        seconds = 2 + (v % 3)
        write_video(folder / f"v{v}.mp4", regular_times(seconds, 10))
        for q in range(2):
            start = 0.5 * q
            annotations["test" if v % 4 == 3 else "train"].append(
                [f"v{v}", float(seconds), [start, start + 1.0], SENTENCES[(v + q) % len(SENTENCES)]])
    features = tmp_path / "features.hdf5"
    result = run_cli([folder, "-o", features, "--weights", tiny_clip, "--fps", 4, "--workers", 1])
    assert result.exit_code == 0, result.output

    paths = {"features": features, "glove": write_glove(tmp_path / "glove.pkl", WORDS)}
    for split, items in annotations.items():
        paths[split] = tmp_path / f"{split}.json"
        paths[split].write_text(json.dumps(items))
    config = tiny_config(paths, tmp_path / "checkpoints")
    config["dataset"]["frame_dim"] = 16  # the tiny CLIP's width
    (tmp_path / "config.json").write_text(json.dumps(config))
    trained = CliRunner().invoke(train_main, ["--config-path", str(tmp_path / "config.json"), "--tag", "t",
                                              "--epochs", "1", "--num-workers", "0", "--threads", "1"])
    assert trained.exit_code == 0, trained.output
    checkpoint = tmp_path / "checkpoints" / "t" / "model-best.pt"

    model = tmp_path / "model.onnx"
    exported = CliRunner().invoke(export_main, [str(checkpoint), "--vocab", str(paths["glove"]), "-o", str(model)])
    assert exported.exit_code == 0, exported.output

    predictions, errors = tmp_path / "predictions.jsonl", tmp_path / "errors.jsonl"
    grounded = CliRunner().invoke(run_main, ["--model", str(model), "--features", str(features), "--queries",
                                             str(paths["test"]), "-o", str(predictions), "--errors", str(errors)])
    assert grounded.exit_code == 0, grounded.output
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["vid"], r["query"]) for r in records] == [(a[0], a[3]) for a in annotations["test"]]
    for record, annotation in zip(records, annotations["test"]):
        (start, end, _), = record["pred_relevant_windows"]
        assert 0 <= start <= end <= annotation[1] and record["duration"] == annotation[1] and "iou" in record
    assert errors.read_text() == ""

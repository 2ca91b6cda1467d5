"""convert/download.py against a real HTTP server on 127.0.0.1 serving OpenAI's bucket layout.

Cut connections resume with a Range request and give byte-identical files; HTTP errors are raised and
never saved; short files, wrong hashes and wrong sizes are rejected. End to end, `python -m convert
--model 124M --base-url <local>` downloads a real (small) TF checkpoint and converts it.
"""

from __future__ import annotations

import pytest
import torch
from helpers.convert_http_server import FileServer
from helpers.tf_checkpoints import hf_reference, random_arrays, write_checkpoint

from convert import download
from convert.__main__ import main
from convert.download import FILES, DownloadError, download_file, download_model
from gpt2.formats.weights import load_model

HP = dict(n_vocab=50257, n_ctx=32, n_embd=32, n_head=2, n_layer=2)
DATA = "model.ckpt.data-00000-of-00001"
FAST = dict(backoff=0.01, progress=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory, bpe_dir):
    """The seven files of a small checkpoint written by TensorFlow, as OpenAI's bucket serves them."""
    src = write_checkpoint(tmp_path_factory.mktemp("release") / "ckpt", HP, random_arrays(HP, 7), bpe_dir)
    return src, {name: (src / name).read_bytes() for name in FILES}


@pytest.fixture
def server(release):
    with FileServer() as s:
        s.add_model("tiny", release[1])
        yield s


def _same_as_release(dest, release):
    return all((dest / n).read_bytes() == data for n, data in release[1].items())


def test_download_all_files_with_progress(server, release, tmp_path, capsys):
    dest = download_model("tiny", tmp_path / "dl", url=server.base_url, known_sizes={}, backoff=0.01)
    assert _same_as_release(dest, release)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no .partial left behind
    err = capsys.readouterr().err
    assert DATA in err and "100%" in err  # tqdm's bar for each file
    # A second run finds every file complete and downloads nothing.
    n = len(server.requests)
    download_model("tiny", dest, url=server.base_url, known_sizes={}, **FAST)
    assert len(server.requests) == n


def test_cut_connection_resumes_on_the_next_run(server, release, tmp_path):
    path = server.path("tiny", DATA)
    size = len(release[1][DATA])
    server.cut_after[path] = (size // 3, 1)
    dest = tmp_path / "dl"
    with pytest.raises(DownloadError, match="run again to resume"):
        download_model("tiny", dest, url=server.base_url, known_sizes={}, retries=0, **FAST)
    assert not (dest / DATA).exists()  # never under its real name while incomplete
    kept = (dest / f"{DATA}.partial").stat().st_size
    assert 0 < kept <= size // 3  # (the last, torn chunk may be dropped: it is fetched again)
    download_model("tiny", dest, url=server.base_url, known_sizes={}, retries=0, **FAST)
    assert server.ranges(path) == [None, f"bytes={kept}-"]
    assert _same_as_release(dest, release)
    assert not (dest / f"{DATA}.partial").exists()


def test_retry_within_one_run_resumes_after_cuts_and_5xx(server, release, tmp_path):
    path = server.path("tiny", DATA)
    size = len(release[1][DATA])
    server.cut_after[path] = (size // 4, 2)  # two cuts, each after a quarter of what was asked for
    server.fail[server.path("tiny", "hparams.json")] = (503, 1)
    dest = download_model("tiny", tmp_path / "dl", url=server.base_url, known_sizes={}, retries=3, **FAST)
    ranges = server.ranges(path)
    assert ranges[0] is None and len(ranges) == 3
    starts = [int(r.removeprefix("bytes=").removesuffix("-")) for r in ranges[1:]]
    assert 0 < starts[0] < starts[1] < size  # each retry resumed further along
    assert server.ranges(server.path("tiny", "hparams.json")) == [None, None]
    assert _same_as_release(dest, release)


def test_404_is_a_clear_error_and_nothing_is_written(server, tmp_path):
    dest = tmp_path / "dl"
    with pytest.raises(DownloadError, match=r"models/9000M/checkpoint: HTTP 404 .*check the model size"):
        download_model("9000M", dest, url=server.base_url, **FAST)
    assert not dest.exists()


def test_404_mid_release_keeps_no_file_for_it(server, tmp_path):
    del server.files[server.path("tiny", "model.ckpt.index")]
    dest = tmp_path / "dl"
    with pytest.raises(DownloadError, match="model.ckpt.index: HTTP 404"):
        download_model("tiny", dest, url=server.base_url, known_sizes={}, **FAST)
    assert not any(p.name.startswith("model.ckpt.index") for p in dest.iterdir())
    assert (dest / DATA).is_file()  # complete files before it stay, so a rerun need not fetch them again


def test_file_shorter_than_its_known_size_is_rejected(server, release, tmp_path):
    index = release[1]["model.ckpt.index"]
    known = {"model.ckpt.index": len(index) + 100}
    with pytest.raises(
        DownloadError, match=f"offers {len(index):,} bytes but model.ckpt.index is {len(index) + 100:,}"
    ):
        download_model("tiny", tmp_path / "dl", url=server.base_url, known_sizes=known, **FAST)
    assert not any(p.name.startswith("model.ckpt.index") for p in (tmp_path / "dl").iterdir())


def test_data_file_must_be_four_bytes_per_parameter(server, release, tmp_path):
    # A data file cut short on the server (consistent Content-Length) is caught by the hparams rule.
    server.files[server.path("tiny", DATA)] = release[1][DATA][:-8]
    with pytest.raises(DownloadError, match=f"is {len(release[1][DATA]):,} bytes"):
        download_model("tiny", tmp_path / "dl", url=server.base_url, known_sizes={}, **FAST)
    assert not (tmp_path / "dl" / DATA).exists() and not (tmp_path / "dl" / f"{DATA}.partial").exists()


def test_hparams_of_another_size_are_rejected(server, tmp_path):
    # The known data size says 124M; the served hparams.json describes the small model: wrong mirror.
    known = {DATA: 497759232}
    with pytest.raises(DownloadError, match="describes a model of .* parameters, not OpenAI's tiny"):
        download_model("tiny", tmp_path / "dl", url=server.base_url, known_sizes=known, **FAST)
    assert not (tmp_path / "dl" / "hparams.json").exists()  # not kept as if it were good
    assert server.ranges(server.path("tiny", DATA)) == []  # the big file was never requested


def test_tokenizer_file_with_wrong_sha256_is_rejected(server, release, tmp_path):
    bad = bytearray(release[1]["vocab.bpe"])
    bad[-2] ^= 1
    server.files[server.path("tiny", "vocab.bpe")] = bytes(bad)
    with pytest.raises(DownloadError, match="SHA-256 .* does not match GPT-2's vocab.bpe"):
        download_model("tiny", tmp_path / "dl", url=server.base_url, known_sizes={}, **FAST)
    assert not any(p.name.startswith("vocab.bpe") for p in (tmp_path / "dl").iterdir())


def test_partial_longer_than_file_restarts_and_416_is_handled(server, release, tmp_path):
    url = f"{server.base_url}/models/tiny/hparams.json"
    data = release[1]["hparams.json"]
    dest = tmp_path / "hparams.json"
    # A partial that already holds the whole file: the server answers 416 and the file is finished.
    (tmp_path / "hparams.json.partial").write_bytes(data)
    download_file(url, dest, **FAST)
    assert dest.read_bytes() == data
    assert server.ranges(server.path("tiny", "hparams.json")) == [f"bytes={len(data)}-"]
    # A partial longer than the known size is not a prefix of the file: start over.
    dest.unlink()
    (tmp_path / "hparams.json.partial").write_bytes(data + b"garbage")
    download_file(url, dest, expected_size=len(data), **FAST)
    assert dest.read_bytes() == data


def test_unreachable_server_gives_up_with_a_message(tmp_path):
    with FileServer() as s:
        url = s.base_url
    with pytest.raises(DownloadError, match="cannot connect .*gave up after 3 attempt"):
        download_file(f"{url}/models/124M/checkpoint", tmp_path / "checkpoint", retries=2, timeout=5, **FAST)
    assert not any(tmp_path.iterdir())


def test_base_url_from_environment(monkeypatch):
    monkeypatch.setenv("GPT2_BASE_URL", "http://127.0.0.1:1/mirror/")
    assert download.base_url() == "http://127.0.0.1:1/mirror"
    assert download.base_url("http://x/y") == "http://x/y"
    monkeypatch.delenv("GPT2_BASE_URL")
    assert download.base_url() == "https://openaipublic.blob.core.windows.net/gpt-2"


def test_known_sizes_are_openais():
    assert download.KNOWN_SIZES["124M"][DATA] == 497759232 == 4 * 124_439_808
    assert download.KNOWN_SIZES["355M"][DATA] == 1419292672
    assert {k: download.KNOWN_SIZES["124M"][k] for k in ("model.ckpt.index", "model.ckpt.meta")} == {
        "model.ckpt.index": 5215,
        "model.ckpt.meta": 471155,
    }


# --- the CLI end to end ------------------------------------------------------------------------------------


def test_cli_downloads_converts_and_cleans_up(server, release, tmp_path, monkeypatch, capsys):
    # Serve the small checkpoint as "124M", with the table of known sizes pointing at its files.
    server.add_model("124M", release[1])
    monkeypatch.setitem(download.KNOWN_SIZES, "124M", {n: len(d) for n, d in release[1].items()})
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPT2_BASE_URL", server.base_url)
    out = tmp_path / "weights"
    assert main(["--model", "124M", "--out", str(out), "--retry-backoff", "0.01"]) == 0
    captured = capsys.readouterr()
    assert "model.ckpt.data" in captured.err and "100%" in captured.err
    assert "gpt2-124M.safetensors" in captured.out and "python app.py" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "gpt2-124M.safetensors", "vocab.bpe"]
    assert not (tmp_path / "cache" / "124M").exists()  # downloads removed (no --keep-download)
    model = load_model(out / "gpt2-124M.safetensors")
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx) - hf_reference(release[0])(idx).logits).abs().max().item() <= 1e-4


def test_cli_keep_download_and_404(server, release, tmp_path, capsys):
    out, cache = tmp_path / "weights", tmp_path / "cache"
    args = ["--out", str(out), "--cache-dir", str(cache), "--base-url", server.base_url, "--no-progress"]
    assert main(["--model", "355M", *args]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and "models/355M/checkpoint: HTTP 404" in err
    assert "Traceback" not in err
    assert not out.exists() and not (cache / "355M").exists()

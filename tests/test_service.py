"""The inspection service, started for real on 127.0.0.1 and spoken to over HTTP."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from casting_inspection.deploy.inference import Inspector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported_model):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "casting_inspection.deploy.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            str(exported_model["onnx"]),
            "--max-upload-mb",
            "0.2",
            "--max-files",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("server did not start: " + process.communicate()[1])
    yield url
    process.terminate()
    process.wait(timeout=10)


def photos(exported_model, n: int) -> list[tuple[str, bytes]]:
    paths = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:n]
    return [(p.name, p.read_bytes()) for p in paths]


def test_health_and_model(server, exported_model):
    inspector = Inspector(exported_model["onnx"])
    assert httpx.get(server + "/health").json() == {"status": "ok", "model_version": inspector.version}
    info = httpx.get(server + "/model").json()
    assert info["threshold"] == 0.5 and info["input"]["image_size"] == 32 and "checkpoint_md5" in info["source"]
    assert "git_commit" not in info["source"]  # provenance by content: no git state inside an output


def test_predict_several_images_decides_as_the_cli_does(server, exported_model):
    files = photos(exported_model, 5)
    response = httpx.post(server + "/predict", files=[("files", (name, data, "image/jpeg")) for name, data in files])
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Inspector(exported_model["onnx"]).inspect(files)
    assert [r["file"] for r in body["results"]] == [name for name, _ in files]
    assert [r["decision"] for r in body["results"]] == [r.decision for r in expected]
    assert [r["defect_probability"] for r in body["results"]] == pytest.approx([r.defect_probability for r in expected], abs=1e-6)


def test_concurrent_clients_are_all_served(server, exported_model):
    ((name, data),) = photos(exported_model, 1)

    def one(_):
        return httpx.post(server + "/predict", files={"files": (name, data, "image/jpeg")}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(24))) == [200] * 24


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]


def test_bad_requests_get_clear_json_errors(server, exported_model):
    ((name, data),) = photos(exported_model, 1)
    message = error_of(httpx.post(server + "/predict", files={"files": ("notes.jpeg", b"hello", "image/jpeg")}), 422)
    assert "notes.jpeg" in message and "not an image" in message
    assert "'files'" in error_of(httpx.post(server + "/predict", files={"other": (name, data, "image/jpeg")}), 400)
    assert "multipart" in error_of(httpx.post(server + "/predict", content=data, headers={"content-type": "image/jpeg"}), 415)
    big = ("big.jpeg", b"\xff" * 300_000, "image/jpeg")
    assert "larger than 200000 bytes" in error_of(httpx.post(server + "/predict", files={"files": big}), 413)
    many = [("files", (f"{k}.jpeg", data, "image/jpeg")) for k in range(9)]
    assert "at most 8 files" in error_of(httpx.post(server + "/predict", files=many), 400)
    tiny = io.BytesIO()
    Image.new("L", (8, 8), 128).save(tiny, "PNG")
    assert "too small" in error_of(
        httpx.post(server + "/predict", files={"files": ("tiny.png", tiny.getvalue(), "image/png")}), 422
    )
    assert httpx.get(server + "/nowhere").json() == {"error": "Not Found"}

"""The node as a packager or a PACS admin gets it: the wheel, installed (not editable) into a fresh venv, run from an
empty directory.

The venv is new (``python -m venv``, no ``--system-site-packages``): the project and every dependency come from the
wheel and the package index (torch pinned to the CPU build CI uses, as scripts/bootstrap.sh does). Nothing of the
source tree is importable: PYTHONPATH is dropped and the commands run from an empty directory, with PATH reduced
to the system's (so dciodvfy must be found inside the venv, as in a service that does not activate it). The
``eval`` extra is not installed, so ``eval`` must say which extra it needs.

Measured on the 2-core machine: building the wheel 3 s; the fresh venv plus ``pip install`` 92 s when the machine
was otherwise idle (262-383 s with four other test runs beside it, load average 10-13); the whole module 9-13 min
under that load. Fast enough for CI, so the venv really is fresh (no shared site-packages).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from dicomnode.peers.ports import free_port, wait_for_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STORESCU = "/usr/bin/storescu"  # DCMTK's (pynetdicom installs a console script of the same name)
TORCH_PIN = "torch==2.13.0"  # the CPU build CI installs (scripts/bootstrap.sh)
# what a source distribution would carry: no tests, no git, no venv, no build leftovers
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "tests", "build", "dist", "*.egg-info", "__pycache__", "var",
                                     "out", ".pytest_cache", "benchmarks")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", HF_HUB_OFFLINE="1", COLUMNS="160")
    return env


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    shown = " ".join(str(a) for a in args[1:])
    print(f"\n$ cxr-node {shown}   [{time.monotonic() - started:.1f} s, exit {result.returncode}]")
    print((result.stdout + result.stderr).strip()[-3000:])
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from a copy of the source tree installed into it."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SHIPPED)
    started = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                            str(source)], env=_env(), capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = (work / "dist").glob("cxr_reasoning_node-*.whl")
    built = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    python = work / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_PIN, str(wheel)], env=_env(),
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"\nwheel {wheel.name} built in {built - started:.1f} s; fresh venv + pip install in "
          f"{time.monotonic() - built:.1f} s")
    return work / "venv"


@pytest.fixture(scope="module")
def empty_dir(venv: Path) -> Path:
    directory = venv.parent / "site"
    directory.mkdir()
    return directory


def _cxr_node(venv: Path) -> str:
    return str(venv / "bin" / "cxr-node")


def test_the_project_comes_from_the_wheel_only(venv: Path, empty_dir: Path) -> None:
    code = ("import json, importlib.metadata as m, dicomnode, inference, sr_writer; "
            "d = m.distribution('cxr-reasoning-node'); "
            "print(json.dumps([dicomnode.__file__, inference.__file__, sr_writer.__file__, "
            "d.read_text('direct_url.json'), [x.metadata['Name'] for x in m.distributions() "
            "if x.metadata['Name'] in ('sacrebleu', 'rouge-score', 'matplotlib')]]))")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=empty_dir, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *files, direct_url, eval_packages = json.loads(result.stdout)
    site_packages = str(venv / "lib")
    assert all(f.startswith(site_packages) for f in files), files
    assert direct_url is None or '"editable": true' not in direct_url
    assert eval_packages == []  # the eval extra is not part of a plain install


def test_the_wheel_holds_the_product_packages_only(venv: Path) -> None:
    (wheel,) = (venv.parent / "dist").glob("cxr_reasoning_node-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "dicomnode", "inference", "sr_writer"}
    assert "dicomnode/peers/ohif.py" in names
    assert {"dicomnode/peers/js/mllp_receiver.mjs", "dicomnode/peers/js/package-lock.json"} <= set(names)
    assert not [n for n in names if "node_modules" in n]  # `npm ci` installs the peers' packages, never the wheel
    assert not [n for n in names if n.endswith("vllm.py")]  # the tests' vLLM launcher (tests/vllm_engine.py)


def test_commands_from_an_empty_directory(venv: Path, empty_dir: Path) -> None:
    node = _cxr_node(venv)
    site = empty_dir

    init = _run([node, "config", "init", "mysite"], site)
    assert init.returncode == 0 and (site / "mysite" / "node.yaml").is_file()
    assert (site / "mysite" / "stages.yaml").read_text() == (REPO / "config" / "stages.yaml").read_text()
    check = _run([node, "config", "check", "mysite/node.yaml"], site)
    assert check.returncode == 0 and "OK" in check.stdout and "processor reasoning" in check.stdout

    demo = _run([node, "model", "demo", "mysite/model"], site)
    assert demo.returncode == 0, demo.stderr
    info = _run([node, "model", "info", "mysite/model"], site)  # reads model_profiles.yaml from the package
    assert info.returncode == 0, info.stderr

    make_study = ("import sys; from dicomnode.demo.synthetic import StudySpec, write_study; "
                  "write_study(sys.argv[1], StudySpec(rows=192, columns=160, views=('PA',)))")
    subprocess.run([str(venv / "bin" / "python"), "-c", make_study, "study"], cwd=site, env=_env(), check=True,
                   timeout=120)
    (study_file,) = (site / "study").glob("*.dcm")

    reason = _run([node, "reason", "study", "--model", "mysite/model", "--max-new-tokens", "2", "--max-side", "128",
                   "--device", "cpu", "--json", "record.json"], site)  # the stage book shipped in the package
    assert reason.returncode == 0, reason.stderr
    assert "DEMO" in reason.stdout and (site / "record.json").is_file()

    render = _run([node, "render", "record.json", "--sources", str(study_file), "--out", "rendered"], site)
    assert render.returncode == 0, render.stderr  # finding_codes.yaml from the package; dciodvfy from the venv
    assert list((site / "rendered").rglob("*.dcm"))

    run = _run([node, "run", "study", "--model", "mysite/model", "--out", "batch", "--config", "mysite/node.yaml",
                "--device", "cpu", "--max-new-tokens", "2"], site)
    assert run.returncode == 0, run.stderr
    assert len(list((site / "batch").rglob("*.dcm"))) >= 2  # an SR and at least one page

    rule = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "from dicomnode.demo.run import routing_rule_path; "
                           "print(routing_rule_path().read_text()[:40])"],
                          cwd=site, env=_env(), capture_output=True, text=True, timeout=120)
    assert rule.returncode == 0 and rule.stdout.strip(), rule.stderr  # the Orthanc Lua rule `demo` installs

    dataset = site / "one-study.json"
    dataset.write_text("[]")
    evaluation = _run([node, "eval", str(dataset), "--oracle"], site)
    assert evaluation.returncode == 2
    assert "pip install 'cxr-reasoning-node[eval]'" in evaluation.stderr


def test_serve_receives_a_study_with_storescu(venv: Path, empty_dir: Path) -> None:
    site = empty_dir / "serve"
    site.mkdir()
    port, dashboard_port = free_port(), free_port()
    config = {"node": {"ae_title": "CXRNODE", "host": "127.0.0.1", "port": port},
              "storage": {"data_dir": "var"},
              "dashboard": {"enabled": True, "port": dashboard_port},  # templates and CSS from the wheel
              "study": {"quiet_seconds": 600},  # receive only: the study stays open for this test
              "model": {"path": str(empty_dir / "mysite" / "model")}}
    (site / "node.yaml").write_text(yaml.safe_dump(config))
    make_study = ("import sys; from dicomnode.demo.synthetic import StudySpec, write_study; "
                  "write_study(sys.argv[1], StudySpec(rows=128, columns=104))")
    subprocess.run([str(venv / "bin" / "python"), "-c", make_study, "incoming"], cwd=site, env=_env(), check=True,
                   timeout=120)
    files = sorted((site / "incoming").glob("*.dcm"))
    log = open(site / "serve.log", "w+")
    server = subprocess.Popen([_cxr_node(venv), "serve", "--config", "node.yaml"], cwd=site, env=_env(),
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(port, timeout=120), (site / "serve.log").read_text()[-3000:]
        sent = subprocess.run([STORESCU, "-aec", "CXRNODE", "127.0.0.1", str(port), *map(str, files)],
                              capture_output=True, text=True, timeout=120)
        print(f"\n$ {STORESCU} -aec CXRNODE 127.0.0.1 {port} <{len(files)} files>   [exit {sent.returncode}]")
        assert sent.returncode == 0, sent.stderr
        status = _run([_cxr_node(venv), "status", "--config", "node.yaml", "--json"], site)
        assert status.returncode == 0 and '"instances": 2' in status.stdout
        import urllib.request

        dashboard = f"http://127.0.0.1:{dashboard_port}"
        assert wait_for_port(dashboard_port, timeout=60), (site / "serve.log").read_text()[-3000:]
        with urllib.request.urlopen(f"{dashboard}/studies", timeout=60) as page:
            assert b"RECEIVING" in page.read()
        with urllib.request.urlopen(f"{dashboard}/static/style.css", timeout=60) as css:
            assert css.status == 200 and b"font" in css.read()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    print((site / "serve.log").read_text()[-1500:])
    assert server.returncode == 0
    assert len(list((site / "var" / "spool").rglob("*.dcm"))) == len(files)

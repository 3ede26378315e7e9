"""`kernel-fx variants`, and two processes downloading one kernel into one cache at once."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

from hub_helpers import child_env, cli

REPO = "kernels-community/scale"


def test_variants_command_lists_every_variant_with_status_and_reason(publish, capsys):
    commit = publish(REPO, {"torch-cpu": "cpu", "torch-cuda": "cuda", "torch-universal": "u"}, branch="v1")
    assert cli("variants", REPO, "--version", "1", "--backend", "cpu") == 0
    out = capsys.readouterr().out
    assert f"{REPO}@v1 (commit {commit})" in out and "system: torch " in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("torch-")}
    assert "chosen" in lines["torch-cpu"]
    assert "fits" in lines["torch-universal"]
    assert "rejected" in lines["torch-cuda"] and "noarch build for backend cuda, this system uses cpu" in lines["torch-cuda"]


def test_variants_command_errors_go_to_stderr(hub, capsys):
    assert cli("variants", "kernels-community/none") == 1
    assert "kernel-fx: error: Kernel repo 'kernels-community/none' was not found" in capsys.readouterr().err


def test_two_processes_download_the_same_kernel_into_one_cache(publish, hub, hub_env):
    big = "# filler\n" * 50_000
    files = {"__init__.py": "from ._tag import TAG\nfrom . import a, b, c\n", "_tag.py": "TAG = 'shared'\n",
             "a.py": big, "b.py": big + "#b\n", "c.py": big + "#c\n"}
    commit = publish(REPO, {"torch-cpu": files})
    hub.hold = ("/a.py", 2)  # a.py is served only once both processes asked for it: the downloads overlap
    code = textwrap.dedent(f"""
        import kernel_fx
        print(kernel_fx.get_kernel({REPO!r}, backend="cpu").TAG)
    """)
    env = child_env(HF_ENDPOINT=hub.url, KERNEL_FX_CACHE=str(hub_env))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == ["shared", "shared"]
    assert sum(m == "HEAD" and p.endswith("/a.py") for m, p in hub.requests) == 2
    published = hub.repos[("kernel", REPO)].commits[commit]
    variant_dir = hub_env / "kernels--kernels-community--scale" / "snapshots" / commit / "build" / "torch-cpu"
    for name in files:
        on_disk = hashlib.sha256((variant_dir / name).read_bytes()).hexdigest()
        assert on_disk == hashlib.sha256(published[f"build/torch-cpu/{name}"]).hexdigest(), name
    assert not list(hub_env.rglob("*.incomplete"))

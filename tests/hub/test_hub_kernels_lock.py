"""`kernels.lock`, the lock file of the Hugging Face `kernels` package 0.19: read, fetched, verified, loaded."""

from __future__ import annotations

import json

import pytest
from hub_helpers import cli, kernel_files, kernels_variant, run_python, write_repo

import kernel_fx
from kernel_fx import load_kernel
from kernel_fx.errors import KernelFxError, KernelLoadError
from kernel_fx.hub.errors import KernelIntegrityError, LockfileError, NotCachedError
from kernel_fx.hub.importer import source_of
from kernel_fx.hub.locks import find_lockfile, read_lockfile

REPO = "stranger/scale"  # untrusted: a lock is enough to load it


def kernels_lock(*entries: tuple[str, dict, str]) -> str:
    """A `kernels.lock` as `kernels lock` writes it: [(repo_id, {"version": N} or {"revision": r}, commit)]."""
    return json.dumps([{"dependency": {"repo-id": repo, **spec}, "lock": {"commit": commit}} for repo, spec, commit in entries],
                      indent=2)


@pytest.fixture
def locked(tmp_path, hub):
    """REPO v1 (with a `kernels` digest) and v2 on the Hub; a project whose kernels.lock pins v1."""
    commits = {}
    for tag in ("v1", "v2"):
        root = write_repo(tmp_path / f"src-{tag}", {"torch-cpu": kernels_variant(f"scale_{tag}", kernel_files(tag)),
                                                   "torch-cuda": kernels_variant(f"scale_{tag}_cuda", kernel_files("cuda"))})
        commits[tag] = hub.publish(REPO, root, branch=tag)
    project = tmp_path / "project"
    project.mkdir()
    (project / "kernels.lock").write_text(kernels_lock((REPO, {"version": 1}, commits["v1"])))
    return project / "kernels.lock", commits


def test_read_as_kernels_writes_it(locked):
    lockfile, commits = locked
    [entry] = read_lockfile(lockfile)
    assert (entry.repo_id, entry.commit, entry.version, entry.revision) == (REPO, commits["v1"], 1, None)


def test_download_then_offline_load_of_the_locked_commit(locked, hub, offline):
    lockfile, commits = locked
    assert cli("download", str(lockfile)) == 0
    downloaded = [p for _, p in hub.requests if "/resolve/" in p]
    assert downloaded and all("/build/torch-cpu/" in p for p in downloaded)  # only the variant for this system
    hub.stop()
    offline()
    kernel = load_kernel(REPO, lockfile=lockfile, backend="cpu")  # untrusted repo: the lock is the opt-in
    assert kernel.TAG == "v1"
    source = source_of(kernel)
    assert (source.commit, source.revision, source.variant) == (commits["v1"], "v1", "torch-cpu")


def test_the_same_cache_and_lock_load_in_kernels_itself(locked, hub_env):
    """The oracle: `kernels` 0.19 loads what kernel_fx fetched for its lock, from the same cache."""
    pytest.importorskip("kernels")
    lockfile, _ = locked
    assert cli("download", str(lockfile)) == 0
    out = run_python(f"""
        import kernels
        print(kernels.load_kernel({REPO!r}, lockfile={str(lockfile)!r}, backend="cpu").TAG)
    """, KERNELS_CACHE=str(hub_env), HF_HUB_OFFLINE="1")
    assert out.stdout.split()[-1] == "v1"


def test_lockfile_found_upwards_and_kernel_fx_lock_wins_in_one_folder(locked, monkeypatch):
    lockfile, _ = locked
    (lockfile.parent / "src").mkdir()
    monkeypatch.chdir(lockfile.parent / "src")
    assert find_lockfile() == lockfile
    (lockfile.parent / "kernel-fx.lock").write_text('{"kernel_fx_lock": 1, "kernels": []}')
    assert find_lockfile() == lockfile.parent / "kernel-fx.lock"


def test_locked_layer_repository_reads_a_kernels_lock(locked):
    lockfile, _ = locked
    cli("download", str(lockfile))
    repo = kernel_fx.LockedLayerRepository(REPO, layer_name="Scale", lockfile=lockfile)
    assert repo.load(backend="cpu").__name__ == "Scale"


def test_not_cached_says_how_to_fetch_it(locked):
    lockfile, _ = locked
    with pytest.raises(NotCachedError, match=rf"is not in the cache .*fetch it with `kernel-fx download {lockfile}`"):
        load_kernel(REPO, lockfile=lockfile, backend="cpu")


def test_files_are_checked_against_the_metadata_digest(locked, hub_env):
    lockfile, commits = locked
    cli("download", str(lockfile))
    variant_dir = hub_env / "kernels--stranger--scale" / "snapshots" / commits["v1"] / "build" / "torch-cpu"
    target = variant_dir / "_tag.py"
    target.unlink()  # a symlink into the blobs: replace it, as tampering would
    target.write_text("TAG = 'evil'\n")
    with pytest.raises(KernelIntegrityError, match=r"differ from the digest in its metadata.json .*modified _tag.py"):
        load_kernel(REPO, lockfile=lockfile, backend="cpu")


def test_no_entry_for_the_kernel_is_an_error_not_a_fallback(locked):
    lockfile, _ = locked
    with pytest.raises(LockfileError, match=r"has no entry for 'org/other' \(it locks: stranger/scale\)") as info:
        load_kernel("org/other", lockfile=lockfile)
    assert isinstance(info.value, ValueError) and isinstance(info.value, KernelFxError)
    assert not isinstance(info.value, KernelLoadError)  # kernelize must not swallow it as a load failure


C = "ab" * 20
BAD_LOCKS = {
    "unknown-key": ([{"dependency": {"repo-id": REPO, "version": 1, "extra": 2}, "lock": {"commit": C}}],
                    r"dependency has unknown keys \['extra'\]"),
    "hash-in-lock": ([{"dependency": {"repo-id": REPO, "version": 1}, "lock": {"commit": C, "hash": "x"}}],
                     r"lock has unknown keys \['hash'\]"),
    "no-lock": ([{"dependency": {"repo-id": REPO, "version": 1}}], r"missing keys \['lock'\]"),
    "both": ([{"dependency": {"repo-id": REPO, "version": 1, "revision": "main"}, "lock": {"commit": C}}],
             "exactly one of `version` and `revision`"),
    "neither": ([{"dependency": {"repo-id": REPO}, "lock": {"commit": C}}], "exactly one of `version` and `revision`"),
    "negative": ([{"dependency": {"repo-id": REPO, "version": -1}, "lock": {"commit": C}}], "must be a non-negative integer"),
    "short-commit": ([{"dependency": {"repo-id": REPO, "version": 1}, "lock": {"commit": "abc"}}],
                     r"commit='abc' must be a full git object id \(40 or 64 hex digits\)"),
    "twice": ([{"dependency": {"repo-id": REPO, "version": 1}, "lock": {"commit": C}}] * 2, "locks stranger/scale v1 twice"),
    "old-format": ([{"repo_id": REPO, "sha": C, "variants": {"torch-cpu": {"hash": "sha256-x"}}}],
                   "repo_id/sha/variants layout of older `kernels` releases"),
    "object": ({"kernels": []}, "is neither a kernel_fx lock file"),
}


@pytest.mark.parametrize("content, message", BAD_LOCKS.values(), ids=BAD_LOCKS.keys())
def test_unreadable_kernels_lock_is_a_value_error(tmp_path, content, message):
    lockfile = tmp_path / "kernels.lock"
    lockfile.write_text(json.dumps(content))
    with pytest.raises(LockfileError, match=message) as info:
        load_kernel(REPO, lockfile=lockfile)
    assert isinstance(info.value, ValueError)


def test_uppercase_and_sha256_commits_are_read_like_kernels(tmp_path):
    lockfile = tmp_path / "kernels.lock"
    lockfile.write_text(kernels_lock((REPO, {"version": 1}, "AB" * 20), ("org/other", {"revision": "main"}, "cd" * 32)))
    assert [e.commit for e in read_lockfile(lockfile)] == ["ab" * 20, "cd" * 32]


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "kernels.lock"
    bad.write_text("[{")
    with pytest.raises(LockfileError, match="Cannot read lock file"):
        load_kernel(REPO, lockfile=bad)
    with pytest.raises(LockfileError, match="does not exist"):
        load_kernel(REPO, lockfile=tmp_path / "none" / "kernels.lock")

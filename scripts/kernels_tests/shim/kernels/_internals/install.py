"""`install_kernel(repo_id, revision)`: download the variant that fits this system, return its directory."""

from pathlib import Path


def install_kernel(repo_id, revision, *args, **kwargs):
    from kernel_fx.hub.resolve import fetch, resolve
    from kernel_fx.hub.variants import choose_variant, system_info

    system = system_info()
    resolved = resolve(repo_id, revision=revision, version=None, system=system)
    choice = choose_variant(list(resolved.variants), system, where=repo_id)
    variant_dir, _ = fetch(resolved, choice.name)
    return Path(variant_dir)

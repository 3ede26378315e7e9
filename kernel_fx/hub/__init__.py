"""The only code that talks to huggingface_hub: find, fetch, verify and import Hub kernels.

    api         get_kernel, has_kernel, get_kernel_variants, load_kernel, get_local_kernel
    resolve     revision or version -> commit and variant names, from the cache or the Hub
    revisions   what was asked for (`requested`) and what it pinned to (`Resolved`)
    remote      the Hub requests (through huggingface_hub) and what their failures mean
    deadlines   a bound on every Hub call: a worker thread and a deadline (KERNEL_FX_HUB_TIMEOUT)
    cache       read-only look-ups in the huggingface_hub cache
    variants    build variant names (legacy and dotted), checked against this system, the preferred one chosen
    archs       the metadata's GPU archs against this device (check_arch)
    trust       who may run code on import
    integrity   sha256 of a variant's files against a lock or the metadata digest (both digest forms)
    locks       kernel-fx.lock: write, read, pre-fetch; kernels_lock: the kernels package's kernels.lock
    specs       what a project declares
    importer    import a variant under its metadata id; archives: zipped builds; local: local directories
    deps        kernels a kernel depends on (`kernel-depends`), loaded first; `get_kernel_dep` during its import
    env         the environment variables, read at call time; errors: one type per cause
"""

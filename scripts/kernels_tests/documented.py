"""The `kernels` 0.19.1 tests kernel_fx fails on purpose: {test id: the README row that says why}."""

DOCUMENTED: dict[str, str] = {}

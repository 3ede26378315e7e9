"""The eager path: `kernelize` installs, per module instance, a forward that runs the kernel the
planner chose for each condition (`forwards`), after giving back forwards the `kernels` package
installed (`hub_forwards`); `inspect_layers` reads what it installed. A sibling of `compile/`:
both stand on the planner and the checks, neither imports the other."""

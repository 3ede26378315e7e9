import threading

import pytest

from kernel_fx import (
    CUDAProperties,
    Device,
    LocalLayerRepository,
    MappingError,
    Mode,
    Reason,
    register_kernel_mapping,
    use_kernel_mapping,
)
from kernel_fx.mapping import Choice, current_mapping, resolve

INF, T, C, F = Mode.INFERENCE, Mode.TRAINING, Mode.TORCH_COMPILE, Mode.FALLBACK


def repo(name):
    return LocalLayerRepository(f"/k/{name}", layer_name="L")


def cap(value):
    return lambda: value


def test_bare_repository_is_a_fallback_entry():
    register_kernel_mapping({"L": {"cpu": repo("a")}})
    assert current_mapping()["L"][Device("cpu")] == {F: repo("a")}


# The priority matrix: which registered entry each kernelize mode picks.
MATRIX = [
    ({INF: "i", T: "t"}, INF, "i"),
    ({INF: "i", T: "t"}, T, "t"),
    ({T: "t", F: "f"}, INF, "t"),
    ({INF | C: "ic", F: "f"}, INF, "ic"),
    ({INF: "i", INF | C: "ic"}, INF | C, "ic"),
    ({INF: "i", T | C: "tc"}, INF | C, "tc"),
    ({INF: "i"}, T, None),
    ({INF: "i", F: "f"}, T, "f"),
    ({T: "t", F: "f"}, T | C, "f"),
    ({INF: "i", T: "t"}, T | C, None),
]


@pytest.mark.parametrize("entries,mode,expected", MATRIX, ids=[f"{sorted(map(str, e))}-{m!s}" for e, m, _ in MATRIX])
def test_mode_priority_matrix(entries, mode, expected):
    register_kernel_mapping({"L": {"cpu": {m: repo(n) for m, n in entries.items()}}})
    choice = resolve("L", Device("cpu"), mode)
    if expected is None:
        assert choice.reason is Reason.NO_MODE_ENTRY
    else:
        assert isinstance(choice, Choice) and choice.repository == repo(expected)


def test_training_registered_after_inference_keeps_both():
    register_kernel_mapping({"L": {"cpu": {INF: repo("i")}}})
    register_kernel_mapping({"L": {"cpu": {T: repo("t")}}})
    assert resolve("L", Device("cpu"), INF).repository == repo("i")
    assert resolve("L", Device("cpu"), T).repository == repo("t")


def test_inherit_false_replaces_the_mapping():
    register_kernel_mapping({"A": {"cpu": repo("a")}})
    register_kernel_mapping({"B": {"cpu": repo("b")}}, inherit_mapping=False)
    assert set(current_mapping()) == {"B"}


def test_scopes_nest_and_restore_on_exceptions():
    register_kernel_mapping({"A": {"cpu": repo("a")}})
    with pytest.raises(RuntimeError):
        with use_kernel_mapping({"B": {"cpu": repo("b")}}):
            with use_kernel_mapping({"C": {"cpu": repo("c")}}, inherit_mapping=False):
                assert set(current_mapping()) == {"C"}
            assert set(current_mapping()) == {"A", "B"}
            raise RuntimeError("boom")
    assert set(current_mapping()) == {"A"}


def test_scoped_mappings_are_isolated_between_threads():
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name):
        with use_kernel_mapping({name: {"cpu": repo(name)}}):
            barrier.wait()  # both scopes are open at once
            seen[name] = set(current_mapping())
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("X", "Y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"X": {"X"}, "Y": {"Y"}}
    assert set(current_mapping()) == set()


def ranges(*pairs):
    return {Device("cuda", properties=CUDAProperties(min_capability=a, max_capability=b)): repo(f"{a}-{b}") for a, b in pairs}


def test_narrowest_capability_range_wins():
    register_kernel_mapping({"L": {**ranges((70, 100), (80, 90), (89, 90)), "cuda": repo("any")}})
    assert resolve("L", Device("cuda"), INF, capability=cap(90)).repository == repo("89-90")
    assert resolve("L", Device("cuda"), INF, capability=cap(85)).repository == repo("80-90")
    assert resolve("L", Device("cuda"), INF, capability=cap(120)).repository == repo("any")


def test_ties_are_resolved_the_same_whatever_the_registration_order():
    for pairs in (((80, 89), (85, 94)), ((85, 94), (80, 89))):
        with use_kernel_mapping({"L": ranges(*pairs)}, inherit_mapping=False):
            assert resolve("L", Device("cuda"), INF, capability=cap(86)).repository == repo("85-94")


def test_out_of_range_and_unreadable_capability_are_reasons():
    register_kernel_mapping({"L": ranges((80, 89))})
    assert resolve("L", Device("cuda"), INF, capability=cap(75)).reason is Reason.CAPABILITY_OUT_OF_RANGE

    def unreadable():
        raise RuntimeError("torch sees no cuda device")

    got = resolve("L", Device("cuda"), INF, capability=unreadable)
    assert got.reason is Reason.CAPABILITY_UNAVAILABLE and "sees no cuda" in got.detail


def test_no_mapping_and_no_device_entry_are_reasons():
    assert resolve("L", Device("cpu"), INF).reason is Reason.NO_MAPPING
    register_kernel_mapping({"L": {"cuda": repo("c")}})
    got = resolve("L", Device("cpu"), INF)
    assert got.reason is Reason.NO_DEVICE_ENTRY and "cuda" in got.detail


@pytest.mark.parametrize(
    "bad,message",
    [
        ([], "must be a dict"),
        ({"L": "x"}, "must be a dict {device: repository}"),
        ({"L": {"ipu": repo("a")}}, "Unsupported device type 'ipu'"),
        ({"L": {"cpu": {"inference": repo("a")}}}, "Mapping mode 'inference' is not allowed"),
        ({"L": {"cpu": "org/repo"}}, "is not a repository"),
        ({"": {"cpu": repo("a")}}, "must be a layer name"),
    ],
    ids=["not-a-dict", "devices-not-a-dict", "bad-device", "bad-mode", "not-a-repo", "empty-name"],
)
def test_malformed_mappings_say_what_is_wrong(bad, message):
    with pytest.raises(MappingError, match=message):
        register_kernel_mapping(bad)

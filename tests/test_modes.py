import pytest

from kernel_fx import MappingError, Mode
from kernel_fx.modes import check_kernelize_mode, fallback_chain


def test_inference_and_training_exclude_each_other():
    with pytest.raises(MappingError, match="mutually exclusive"):
        Mode.INFERENCE | Mode.TRAINING


def test_fallback_stands_alone():
    with pytest.raises(MappingError, match="FALLBACK cannot be combined"):
        Mode.FALLBACK | Mode.INFERENCE


@pytest.mark.parametrize("mode", [Mode.FALLBACK, Mode.TORCH_COMPILE], ids=str)
def test_kernelize_rejects_modes_without_inference_or_training(mode):
    with pytest.raises(MappingError, match="allowed modes are"):
        check_kernelize_mode(mode)


def test_chains_are_the_anchors():
    INF, T, C, F = Mode.INFERENCE, Mode.TRAINING, Mode.TORCH_COMPILE, Mode.FALLBACK
    assert fallback_chain(INF) == (INF, INF | C, T, T | C, F)
    assert fallback_chain(T) == (T, T | C, F)
    assert fallback_chain(INF | C) == (INF | C, T | C, F)
    assert fallback_chain(T | C) == (T | C, F)

import pytest

from evoselect_jax.registry import Registry


def _registry():
  reg = Registry("widget", "evoselect_jax")

  @reg.register("square")
  def square(scale=1.0):
    return lambda x: scale * x * x

  return reg


def test_build_passes_kwargs():
  reg = _registry()
  assert reg.build({"name": "square", "scale": 2.0})(3.0) == 18.0


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown widget 'cube'; valid names: square"):
    _registry().build({"name": "cube"})


def test_bad_kwarg_names_component():
  with pytest.raises(TypeError, match=r"Bad options for widget 'square'.*scal"):
    _registry().build({"name": "square", "scal": 2.0})


def test_missing_name():
  with pytest.raises(ValueError, match="needs a 'name'"):
    _registry().build({"scale": 2.0})


def test_double_registration():
  reg = _registry()
  with pytest.raises(ValueError, match="registered twice"):
    reg.register("square")(lambda: None)

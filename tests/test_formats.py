"""Format versions: a newer file says upgrade, an older one what to do, damage says damage."""

import pytest

from ban_jax import formats
from ban_jax.errors import UserError


@pytest.mark.parametrize("kind", sorted(formats.CURRENT))
def test_versions_read_as_they_should(kind):
  for version in range(formats.OLDEST[kind], formats.CURRENT[kind] + 1):
    formats.check(kind, version, "f")          # every layout this release reads
  assert formats.read(kind, formats.stamp(kind, {"a": 1}), "f") == {"a": 1}
  assert formats.read(kind, {"a": 1}, "f") == {"a": 1}   # written before versions: version 1
  newer = formats.CURRENT[kind] + 1
  with pytest.raises(UserError, match=rf"^f is \w+ format version {newer}, newer .*: upgrade "
                                      "ban_jax"):
    formats.check(kind, formats.CURRENT[kind] + 1, "f")
  with pytest.raises(UserError, match=r"older than this ban_jax reads .*: .*fresh --workdir"):
    formats.check(kind, formats.OLDEST[kind] - 1, "f")
  for damaged in ("1", 1.0, None, True, [1]):
    with pytest.raises(UserError, match="not an integer: the file is damaged"):
      formats.check(kind, damaged, "f")

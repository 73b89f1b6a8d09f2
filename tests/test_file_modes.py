"""Analysis outputs get the user's umask (0666 less it: normally 0644), not mkstemp's 0600."""

import os
import stat

import pytest

from mlip_server.analysis import output


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_analysis_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert output.user_umask() == umask and output.user_umask() == umask  # read, not changed
        output.write_table(str(tmp_path / "g.dat"), {"r": [1.0, 2.0], "g": [0.5, 1.0]})
        output.update_summary(str(tmp_path), "rdf", {"peak": 2.8})
        fig, _ = output.new_figure()
        output.save_figure(fig, str(tmp_path / "g.png"))
    finally:
        os.umask(old)
    for name in ("g.dat", "summary.json", "g.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

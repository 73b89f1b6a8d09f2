"""The shape of a refusal as a user meets it, for every test of one (``from refusals import
assert_refused``): exit status 2, exactly one line on stderr that says why, no traceback."""

from __future__ import annotations


def assert_refused(done, *words: str) -> str:
    """Asserts that the finished process ``done`` (``subprocess.CompletedProcess`` with text
    output, or anything with ``returncode`` and ``stderr``) refused: exit 2, one non-empty line on
    stderr containing each of ``words``, and no "Traceback" anywhere in its output. Returns the line.
    """
    stderr = done.stderr or ""
    stdout = getattr(done, "stdout", None) or ""
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert done.returncode == 2, f"exit status {done.returncode}, not 2; stderr: {stderr[-3000:]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr, not 1: {stderr[-3000:]}"
    for word in words:
        assert word in lines[0], f"{word!r} not in the refusal {lines[0]!r}"
    return lines[0]

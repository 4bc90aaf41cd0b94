"""Partial results of a RUS estimation: persisted after every unit, reused only by the same run, and a damaged
file is an error naming it (never a silent restart or a raw unpickling error)."""

import pytest
import torch

from modeling_merge.rus.progress import PartialResults


def test_units_persist_and_are_reused_by_the_same_run_only(tmp_path):
    path = tmp_path / "rus.safetensors.partial"
    PartialResults(path, "run a").put("lag0/pair0-1", torch.ones(2))
    assert torch.equal(PartialResults(path, "run a")["lag0/pair0-1"], torch.ones(2))
    with pytest.warns(UserWarning, match="belong to a different run"):
        assert "lag0/pair0-1" not in PartialResults(path, "run b")


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"", lambda data: b"\x80junk" * 20],
                         ids=["truncated", "empty", "random_bytes"])
def test_a_damaged_file_is_an_error_naming_it_and_the_way_out(tmp_path, damage):
    path = tmp_path / "rus.safetensors.partial"
    PartialResults(path, "run").put("lag0", torch.ones(3))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="is not a readable partial-results file .*delete it to start this estimation over") as error:
        PartialResults(path, "run")
    assert str(path) in str(error.value)


def test_a_file_of_something_else_is_refused(tmp_path):
    path = tmp_path / "p.pt"
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="not a partial-results file"):
        PartialResults(path, "run")

"""MERGE under 2-process DistributedDataParallel (gloo, CPU): experts without tokens and the selection bias."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from modeling_merge import MergeConfig, MergeForSequenceClassification

from merge_tester import MergeModelTester

MODALITIES = {"acc": 3, "eda": 1}


def _config(**overrides) -> MergeConfig:
    """The default expert layout (6 feed-forward + 2 synergy experts, top-2) at a small width."""
    tester = MergeModelTester(modalities=MODALITIES, patch_sizes={}, num_labels=2, num_rus_lags=2)
    return tester.config(num_moe_blocks=2, num_feedforward_experts=6, num_synergy_experts=2, **overrides)


def _train(rank: int, init_file: str, overrides: dict, force_experts: list[int] | None, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = MergeForSequenceClassification(_config(**overrides))
        table = torch.full((2, 2, 2), 0.5) * (1 - torch.eye(2))[:, :, None]
        model.set_rus(table, table, table)
        if force_experts is not None:  # every token goes to these experts: the others get no token at all
            for block in model.merge.blocks:
                block.feed_forward.expert_selection_bias[force_experts] = 1e4
        ddp = DistributedDataParallel(model)  # find_unused_parameters=False, as accelerate launches it
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(rank)  # each process sees other samples
        for _ in range(3):
            inputs = {"acc": torch.randn(4, 6, 3, generator=generator), "eda": torch.randn(4, 6, 1, generator=generator)}
            ddp(modalities=inputs, labels=torch.randint(0, 2, (4,), generator=generator)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        results[rank] = {name: value.detach().clone() for name, value in model.state_dict().items()}
    finally:
        dist.destroy_process_group()


def _run_two_processes(tmp_path, overrides: dict, force_experts: list[int] | None = None) -> list[dict]:
    results = mp.Manager().dict()
    mp.spawn(_train, args=(str(tmp_path / "init"), overrides, force_experts, results), nprocs=2, join=True)
    return [results[0], results[1]]


def test_ddp_trains_when_most_experts_get_no_token_and_keeps_the_processes_identical(tmp_path):
    first, second = _run_two_processes(tmp_path, {"router_bias_update_rate": 0.0}, force_experts=[0, 2])
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, msg=name, rtol=0, atol=0)


@pytest.mark.parametrize("overrides", [{}, {"router_type": "softmax"}, {"router_type": "laplace_per_modality"}])
def test_ddp_keeps_every_router_and_its_selection_bias_identical_across_processes(tmp_path, overrides):
    first, second = _run_two_processes(tmp_path, overrides)
    moved = [value for name, value in first.items() if name.endswith("expert_selection_bias")]
    assert moved and all(bias.abs().sum() > 0 for bias in moved)  # the bias did move, from all-reduced loads
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, msg=name, rtol=0, atol=0)

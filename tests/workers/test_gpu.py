"""CUDA runs of the training and recompute paths give what the CPU gives (skipped without CUDA).

Each test trains or recomputes one step on CUDA and on the CPU from the same seed and compares: the same code
path, every tensor on one device (`TrainSettings.device`), vectors returned on the CPU. Steps are small (Adam's
first step moves every parameter by about ``lr`` whatever its gradient's size, so a gradient that is zero up to
rounding could move the two devices' copies ``2 * lr`` apart)."""

import copy

import pytest
import torch

from ml.embed import model_vectors, served_vectors
from ml.runtime import seed_everything
from ml.settings import ModelSettings, TrainSettings
from ml.text import TextEncoder
from ml.train_hetero import build_hetero, encode, fit_hetero
from ml.train_served import fit_served
from planted_graphs import cluster_text, planted

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


LR = 1e-5


def _one_step(device: str, conv: str):
    split, cluster = planted(seed=11)
    ms = ModelSettings(encoder=conv, hidden=16, layers=2, hetero_half_life_days=1.0)
    ts = TrainSettings(device=device, lr=LR, batch_size=10_000, max_epochs=1, val_fraction=0.15)
    return fit_hetero(split.train, ms, ts, item_text=cluster_text(cluster), progress=False), split, cluster, ms, ts


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin"])
def test_hetero_one_training_step_on_cuda_matches_cpu(conv):
    gpu, split, cluster, ms, ts = _one_step("cuda", conv)
    cpu, *_ = _one_step("cpu", conv)
    assert gpu.model.device.type == "cpu"  # handed back on the CPU, ready for a checkpoint
    assert len(gpu.history) == 1 and gpu.history[0]["loss"] == pytest.approx(cpu.history[0]["loss"], rel=1e-4)
    seed_everything(ts.seed)  # the trainer's initial parameters: the step moved them
    start = build_hetero(split.train, ms, cluster_text(cluster).size(1)).state_dict()
    assert max(float((gpu.model.state_dict()[k] - v).abs().max()) for k, v in start.items()) > LR / 2
    for (name, a), (_, b) in zip(gpu.model.state_dict().items(), cpu.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-4), name
    text = cluster_text(cluster)
    ug, ig = model_vectors(gpu.model, split.train, text)
    uc, ic = model_vectors(cpu.model, split.train, text)
    assert torch.allclose(ug, uc, atol=1e-3) and torch.allclose(ig, ic, atol=1e-3)


def test_hetero_recompute_on_cuda_matches_cpu():
    """A full recompute with the model on CUDA (graph, text and edges handed over on the CPU) equals the CPU's."""
    split, cluster = planted(seed=12)
    g, text = split.train, cluster_text(cluster)
    model = build_hetero(g, ModelSettings(hidden=16, layers=2, hetero_half_life_days=1.0), text.size(1)).eval()
    with torch.no_grad():
        cpu = encode(model, g, model.neighbour_cap, text)
        model.to("cuda")
        gpu = encode(model, g, model.neighbour_cap, text)
    assert all(v.device.type == "cuda" for v in gpu.values())
    for kind in ("user", "item"):
        assert torch.allclose(gpu[kind].cpu(), cpu[kind], atol=1e-4), kind


def test_served_fine_tune_on_cuda_with_metadata_matches_cpu():
    """The served model's fine-tune on CUDA, with categories, brands and text (which used to stay on the CPU)."""
    split, cluster = planted(seed=13)
    text = cluster_text(cluster)
    ms = ModelSettings(dim=16, select_filter=False)
    out = {}
    for device in ("cuda", "cpu"):
        ts = TrainSettings(device=device, lr=LR, served_epochs=1, batch_size=64, val_fraction=0.15, refit=False)
        fitted = fit_served(split.train, ms, ts, item_text=text, progress=False)
        assert any(h.get("epoch") == 1 for h in fitted.history)
        out[device] = served_vectors(fitted.model, split.train, text)
    for a, b in zip(out["cuda"], out["cpu"]):
        assert a.device.type == "cpu" and torch.allclose(a, b, atol=1e-3)


def test_text_encoder_on_cuda_matches_cpu(tmp_path):
    texts = ["blue ballpoint pens, pack of 12", "laser printer toner"]
    gpu = TextEncoder(tmp_path / "gpu", device="cuda")
    v_gpu = gpu.encode(texts)
    assert gpu._model.device.type == "cuda" and v_gpu.device.type == "cpu"
    v_cpu = TextEncoder(tmp_path / "cpu", device="cpu").encode(texts)
    assert torch.allclose(v_gpu, v_cpu, atol=1e-4)


def test_a_hetero_session_card_from_cuda_matches_the_cpus(slices):
    """A worker on CUDA writes the same session card (`HeteroLive.side_card`, read by servers without torch) and the
    same layer-0 inputs as one on the CPU: every array handed back on the CPU."""
    from test_hetero_caps import _live, _slice

    from workers.hetero_live import HeteroLive
    from workers.live import training_graph

    edges, rows = _slice(slices / "amazon-hin")
    torch.manual_seed(0)
    cpu = _live(training_graph(edges, rows), ModelSettings(hidden=8, layers=2, neighbour_cap=4))
    a, x_cpu = cpu.side_card(), cpu.encode([], edges, rows, layers=(0, 1)).layers
    gpu = HeteroLive(copy.deepcopy(cpu.ck), device=torch.device("cuda"))  # its own model: `to` moves a module in place
    b, x_gpu = gpu.side_card(), gpu.encode([], edges, rows, layers=(0, 1)).layers
    assert a is not None and b is not None and gpu.model.device.type == "cuda"
    assert abs(a.x_user - b.x_user).max() <= 1e-6
    for ca, cb in zip((*a.to_user, a.to_item), (*b.to_user, b.to_item)):
        assert ca.kind == cb.kind and all(abs(ca.arrays[k] - cb.arrays[k]).max() <= 1e-6 for k in ca.arrays)
    for k in (0, 1):
        assert max(abs(x_cpu[k][n] - x_gpu[k][n]).max() for n in x_cpu[k]) <= 1e-4

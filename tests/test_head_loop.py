"""Quick mode's inner loop (`training/head_loop.py`) and the shortcuts that make its step
cheap: the triplet grid of P×K batches, the identity head's isometric view, the reused
batch buffer. Each shortcut must give the numbers the plain computation gives."""

from __future__ import annotations

import pytest
import torch

from retrieval_app.losses import TripletLoss, get_distance
from retrieval_app.losses.geometry import cross_class_drift
from retrieval_app.losses.miners import TripletGrid, valid_triplets
from retrieval_app.networks import create_model
from retrieval_app.networks.embedding_net import TrainingView
from retrieval_app.networks.heads import init_from_features, make_head, set_blend
from retrieval_app.training.config import TrainConfig
from retrieval_app.training.head_loop import CHUNK, HeadLoop
from retrieval_app.training.prefetch import Prefetcher

FEATURE_DIM = 1280  # EfficientNet-Lite0's pooled features, what quick mode caches


def pk_labels(p: int, k: int, seed: int = 0) -> torch.Tensor:
    """A P×K batch's labels: K of each of P (arbitrary) classes, in blocks."""
    classes = torch.randperm(100, generator=torch.Generator().manual_seed(seed))[:p]
    return classes.repeat_interleave(k)


def feature_table(classes: int = 8, per_class: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.randn(classes, FEATURE_DIM, generator=generator)
    return (centres[labels] + 0.7 * torch.randn(len(labels), FEATURE_DIM, generator=generator)).abs(), labels


def identity_net(features: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    net = create_model("efficientnet_lite0", head="identity", pretrained=False)
    init_from_features(net.head, features)
    return net


# ---------------------------------------------------------------- the triplet grid
def test_a_pk_batch_has_a_grid_listing_the_valid_triplets_in_their_order():
    labels = pk_labels(5, 4)
    flat, grid = valid_triplets(labels)
    assert isinstance(grid, TripletGrid) and grid.positives.shape == (20, 3) and grid.negatives.shape == (20, 16)
    rows = torch.arange(20)[:, None, None].expand(20, 3, 16)
    positives = grid.positives[:, :, None].expand(20, 3, 16)
    negatives = grid.negatives[:, None, :].expand(20, 3, 16)
    for got, expected in zip((rows, positives, negatives), flat):
        assert torch.equal(got.reshape(-1), expected)


def test_a_batch_whose_anchors_differ_in_positives_has_no_grid():
    _, grid = valid_triplets(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]))
    assert grid is None


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_the_grid_gives_the_indexed_loss_and_gradient(distance):
    labels = pk_labels(6, 4, seed=1)
    embeddings = torch.nn.functional.normalize(torch.randn(24, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    loss_fn = TripletLoss("batch_all", margin=0.3, distance=distance)
    results = []
    for explicit in (False, True):
        x = embeddings.clone().requires_grad_(True)
        # explicit triplets take the indexed path; mined ones a P×K batch's grid
        out = loss_fn(x, labels, triplets=valid_triplets(labels).flat if explicit else None)
        out.loss.backward()
        results.append((out.per_triplet.detach(), out.loss.detach(), x.grad))
    (per_grid, loss_grid, grad_grid), (per_index, loss_index, grad_index) = results
    assert torch.equal(per_grid, per_index)  # the same numbers, the same order
    assert torch.equal(loss_grid, loss_index)
    assert torch.allclose(grad_grid, grad_index, atol=1e-7)


# ---------------------------------------------------------------- the isometric view
def trained_identity_head(features: torch.Tensor, blend: float = 1.0):
    head = make_head("identity", FEATURE_DIM, 128)
    init_from_features(head, features)
    with torch.no_grad():  # a trained head: some update inside the subspace
        head.delta.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(3))
        head.shift.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(4))
    set_blend(head, blend)
    return head


@pytest.mark.parametrize("blend", [1.0, 0.4])
def test_the_identity_heads_view_keeps_norms_and_distances(blend):
    features, _ = feature_table()
    head = trained_identity_head(features, blend)
    direct, view = head(features).double(), head.isometric_forward(head.isometric_inputs(features)).double()
    assert torch.allclose(view.norm(dim=1), direct.norm(dim=1), rtol=1e-5)
    assert torch.allclose(view @ view.t(), direct @ direct.t(), rtol=1e-4, atol=1e-3)
    assert torch.allclose(torch.cdist(view, view), torch.cdist(direct, direct), atol=2e-3)


@pytest.mark.parametrize("blend", [1.0, 0.4])
def test_the_within_batch_view_keeps_the_batchs_norms_and_distances_in_fewer_columns(blend):
    features, _ = feature_table(classes=20)  # more images than the subspace's 128 directions: residuals
    batch = features[:16]
    head = trained_identity_head(features, blend)
    direct = head(batch).double()
    compact = head.batch_isometric_forward(head.isometric_inputs(batch))
    assert compact.shape == (16, 128 + 16)  # the residual block: one column per row of the batch
    compact = compact.double()
    assert torch.allclose(compact.norm(dim=1), direct.norm(dim=1), rtol=1e-5)
    assert torch.allclose(compact @ compact.t(), direct @ direct.t(), rtol=1e-4, atol=1e-3)
    assert torch.allclose(torch.cdist(compact, compact), torch.cdist(direct, direct), atol=2e-3)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("blend", [1.0, 0.4])
def test_the_views_embedding_node_equals_the_composite_form(blend, normalize):
    features, _ = feature_table()
    head = trained_identity_head(features, blend)
    rows = head.isometric_inputs(features[:24])
    weights = torch.randn(24, rows.shape[1], generator=torch.Generator().manual_seed(5))
    fused = head.isometric_embed(rows, normalize)
    assert type(fused.grad_fn).__name__.startswith("_IsometricEmbedding")  # one node while training
    (fused * weights).sum().backward()
    grads = head.delta.grad.clone(), head.shift.grad.clone()
    head.zero_grad()
    out = head.isometric_forward(rows)
    composite = torch.nn.functional.normalize(out, dim=1) if normalize else out
    (composite * weights).sum().backward()
    assert torch.allclose(fused, composite, atol=1e-5)
    assert torch.allclose(grads[0], head.delta.grad, rtol=1e-4, atol=1e-4) and torch.allclose(grads[1], head.shift.grad, rtol=1e-4, atol=1e-4)
    assert grads[0].abs().sum() > 0
    with torch.no_grad():  # evaluation: the plain form
        assert head.isometric_embed(rows, normalize).grad_fn is None


def test_a_batch_with_a_repeated_image_keeps_the_whole_residual():
    features, _ = feature_table()
    batch = torch.cat([features[:8], features[:1]])  # the same image twice: no Cholesky factor
    head = trained_identity_head(features)
    out = head.batch_isometric_forward(head.isometric_inputs(batch))
    assert out.shape == (9, 128 + FEATURE_DIM)
    assert torch.allclose(out.double(), head.isometric_forward(head.isometric_inputs(batch)).double())


def test_mining_across_ranks_trains_on_the_view_that_holds_across_batches():
    features, _ = feature_table(classes=20)
    net = identity_net(features)
    within = net.training_view(features, max_bytes=1 << 30, within_batch=True)
    across = net.training_view(features, max_bytes=1 << 30, within_batch=False)
    assert across.prepare is None and within.prepare is not None
    rows = within.inputs
    a, b = rows[:16], rows[16:32]
    # two batches' rows compared with each other: only the full view gives the true distances
    direct = torch.cdist(net.embed_features(features[:16]), net.embed_features(features[16:32]))
    assert torch.allclose(torch.cdist(across.embed(a), across.embed(b)), direct, atol=1e-4)
    prepared_a, prepared_b = within.prepare(torch.stack([a, b]))
    own = net.embed_features(features[:16])  # within one batch the prepared view is exact
    assert torch.allclose(torch.cdist(within.embed(prepared_a), within.embed(prepared_a)), torch.cdist(own, own), atol=1e-4)
    assert not torch.allclose(torch.cdist(within.embed(prepared_a), within.embed(prepared_b)), direct, atol=1e-2)
    # what the loop picks: within a batch unless it mines on batches gathered from ranks
    config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, seed=0)
    loop = HeadLoop(net, features, torch.arange(len(features)) // 12, config, lr=1e-2, seed=0)
    assert not loop.gather and loop.model(loop._prepare(rows[:16].unsqueeze(0))[0]).shape == (16, 128 + 16)


def test_the_view_is_used_only_where_it_is_exact_and_affordable():
    features, _ = feature_table()
    net = identity_net(features)
    assert net.training_view(features, max_bytes=1 << 30).inputs.shape == (len(features), 128 + FEATURE_DIM)
    assert net.training_view(features, max_bytes=1000).inputs is features  # too large: the features themselves
    unset = create_model("efficientnet_lite0", head="identity", pretrained=False)  # no basis yet: not an isometry
    assert unset.training_view(features, max_bytes=1 << 30).inputs is features
    linear = create_model("efficientnet_lite0", head="linear", dim=16, pretrained=False)
    assert linear.training_view(features, max_bytes=1 << 30).inputs is features
    assert get_distance("euclidean").rotation_invariant and not get_distance("linf").rotation_invariant


def trained_delta(features, labels, distance: str, use_view: bool, monkeypatch) -> torch.Tensor:
    net = identity_net(features)
    if not use_view:
        monkeypatch.setattr(net, "training_view", lambda f, max_bytes, within_batch=False: TrainingView(f, None, net.embed_features))
    config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, distance=distance, seed=0)
    loop = HeadLoop(net, features, labels, config, lr=1e-2, seed=5)
    assert (loop.features.shape[1] == 128 + FEATURE_DIM) == use_view
    if use_view:  # the batch's residuals in one column per row
        assert loop.model(loop._prepare(loop.features[:16].unsqueeze(0))[0]).shape == (16, 128 + 16)
    loop.run(steps=12)
    return net.head.delta.detach().clone()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_training_on_the_view_follows_the_plain_trajectory(distance, monkeypatch):
    features, labels = feature_table(classes=20)  # residuals outside the subspace: the within-batch view
    plain = trained_delta(features, labels, distance, False, monkeypatch)
    fast = trained_delta(features, labels, distance, True, monkeypatch)
    assert plain.abs().max() > 1e-3  # it did train
    assert torch.allclose(fast, plain, atol=1e-4)


def test_a_distance_an_isometry_does_not_keep_trains_on_the_features():
    features, labels = feature_table()
    config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, distance="linf", seed=0)
    loop = HeadLoop(identity_net(features), features, labels, config, lr=1e-2, seed=5)
    assert loop.features.shape == features.shape


# ---------------------------------------------------------------- steps in closed form
def loop_for(head: str, features, labels, *, closed_form: bool = True, **settings) -> HeadLoop:
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0", head=head, dim=16, pretrained=False)
    if head != "mlp":
        init_from_features(net.head, features)
    config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, seed=0, **settings)
    loop = HeadLoop(net, features, labels, config, lr=1e-2, seed=3)
    if not closed_form:  # what every step did before: autograd through the view and the loss
        loop._embed_with_backward = None
    return loop


@pytest.mark.parametrize("head", ["identity", "linear"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_steps_in_closed_form_follow_the_autograd_trajectory(head, reduction):
    features, labels = feature_table(classes=20)
    # a wide margin: the well-separated classes still give active triplets
    fast, plain = (loop_for(head, features, labels, closed_form=flag, reduction=reduction, margin=1.0) for flag in (True, False))
    losses = [[float(loop.step()[0]) for _ in range(25)] for loop in (fast, plain)]
    assert fast.closed_form_steps == 25 and plain.closed_form_steps == 0
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5) and losses[0][0] > 0
    for trained, reference in zip(fast.net.head.parameters(), plain.net.head.parameters()):
        assert torch.allclose(trained, reference, atol=1e-5)
    start = loop_for(head, features, labels).net.head.parameters()
    moved = sum(float((p.detach() - q.detach()).abs().max()) for p, q in zip(plain.net.head.parameters(), start))
    assert moved > 1e-3  # it did train: equal parameters are not equal starts


def test_quick_modes_default_steps_are_taken_in_closed_form():
    features, labels = feature_table()
    loop = loop_for("identity", features, labels)
    loop.run(steps=CHUNK + 3)
    assert loop.closed_form_steps == CHUNK + 3
    assert loop.monitor.steps == CHUNK + 3 and loop.monitor.window() is not None  # the diagnostics still see every batch


@pytest.mark.parametrize("settings", [{"mining": "batch_hard"}, {"distance": "cosine"}, {"keep_geometry": 0.5}])
def test_steps_without_a_closed_form_go_through_autograd(settings):
    features, labels = feature_table()
    loop = loop_for("identity", features, labels, **settings)
    loop.run(steps=5)
    assert loop.steps == 5 and loop.closed_form_steps == 0 and float(loop.net.head.delta.detach().abs().max()) > 0
    mlp = loop_for("mlp", features, labels)
    mlp.run(steps=3)
    assert mlp.closed_form_steps == 0


def test_the_losss_closed_form_equals_autograd_also_where_points_coincide():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=1)
    embeddings[5] = embeddings[4]  # a duplicate: distance exactly 0, the safe square root's case
    embeddings[9] = embeddings[0]  # ... also across classes
    labels = pk_labels(4, 4)
    for reduction in ("mean", "sum"):
        loss_fn = TripletLoss("batch_all", margin=0.5, reduction=reduction)
        out, grad = loss_fn.closed_form(embeddings, labels)
        leaf = embeddings.clone().requires_grad_(True)
        reference = loss_fn(leaf, labels)
        reference.loss.backward()
        assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
        assert torch.allclose(grad, leaf.grad, atol=1e-6)
        assert float(out.loss) == pytest.approx(float(reference.loss.detach()), abs=1e-6)
        assert out.active_fraction == reference.active_fraction and out.n_triplets == reference.n_triplets
        assert torch.equal(out.distances, reference.distances)


def test_the_losss_closed_form_declines_what_it_does_not_write_out():
    embeddings = torch.randn(9, 4)
    uneven = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # no grid
    assert TripletLoss("batch_all").closed_form(embeddings, uneven) is None
    even = pk_labels(3, 3)
    assert TripletLoss("batch_all").closed_form(embeddings, even) is not None
    assert TripletLoss("batch_hard").closed_form(embeddings, even) is None
    assert TripletLoss("batch_all", distance="cosine").closed_form(embeddings, even) is None
    assert not TripletLoss("semi_hard").has_closed_form and TripletLoss().has_closed_form


@pytest.mark.parametrize("blend", [1.0, 0.4])
def test_the_linear_heads_closed_form_sets_autograds_gradients(blend):
    features, _ = feature_table()
    head = make_head("linear", FEATURE_DIM, 16)
    init_from_features(head, features)
    with torch.no_grad():
        head.weight.add_(0.01 * torch.randn_like(head.weight))  # trained away from its start
    set_blend(head, blend)
    rows, upstream = features[:10], torch.randn(10, 16)
    out, set_gradients = head.embed_with_backward(rows, True)
    set_gradients(upstream)
    fast = head.weight.grad.clone(), head.bias.grad.clone()
    head.weight.grad = head.bias.grad = None
    reference = torch.nn.functional.normalize(head(rows), dim=1)
    (reference * upstream).sum().backward()
    assert torch.allclose(out, reference, atol=1e-6)
    assert torch.allclose(fast[0], head.weight.grad, atol=1e-6) and torch.allclose(fast[1], head.bias.grad, atol=1e-6)


# ---------------------------------------------------------------- batches made ahead
def test_batches_are_made_in_chunks_of_gathered_rows():
    features, labels = feature_table()
    net = create_model("efficientnet_lite0", head="linear", dim=16, pretrained=False)
    config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, seed=0)
    loop = HeadLoop(net, features, labels, config, lr=1e-3, seed=0)
    chunk = loop._next_batches()
    assert len(chunk) == CHUNK
    for index, batch_labels, rows in chunk:
        assert torch.equal(rows, features[index]) and torch.equal(batch_labels, labels[index])
        assert len(set(batch_labels.tolist())) == 4  # P×K: 4 classes × 4 images


def test_the_prefetcher_hands_out_every_item_in_order_across_pauses():
    counter = iter(range(10_000))
    prefetcher = Prefetcher(lambda: [next(counter) for _ in range(3)], depth=5, enabled=True)
    seen = []
    for _ in range(4):  # start, take some, pause: what it made ahead is kept, nothing skipped
        prefetcher.start()
        assert prefetcher.running
        seen += [next(prefetcher) for _ in range(7)]
        prefetcher.pause()
        assert not prefetcher.running
    seen += [next(prefetcher) for _ in range(5)]  # paused: made when asked, after the kept ones
    assert seen == list(range(33))


def test_a_failure_while_prefetching_reaches_the_caller():
    def produce():
        raise RuntimeError("bad rows")

    prefetcher = Prefetcher(produce, enabled=True).start()
    with pytest.raises(RuntimeError, match="bad rows"):
        next(prefetcher)
    prefetcher.pause()


def test_training_with_batches_made_ahead_gives_the_same_head_as_without():
    features, labels = feature_table()
    heads = []
    for ahead in (False, True):
        net = identity_net(features)
        config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, seed=0)
        loop = HeadLoop(net, features, labels, config, lr=1e-2, seed=3)
        loop.batches.enabled = ahead
        for _ in range(3):  # runs that stop and start again (quick mode evaluates between them)
            loop.run(steps=CHUNK + 5)
        heads.append(net.head.delta.detach().clone())
    assert heads[0].abs().sum() > 0 and torch.equal(heads[0], heads[1])


# ---------------------------------------------------------------- keeping the geometry
def test_cross_class_drift_counts_only_pairs_of_different_classes():
    labels = torch.tensor([0, 0, 1])
    reference = torch.zeros(3, 3)
    distances = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, 2.0], [1.0, 2.0, 0.0]])  # the same-class pair moved by 5
    assert cross_class_drift(distances, reference, labels).item() == pytest.approx((1 + 4 + 1 + 4) / 4)
    assert cross_class_drift(distances, distances, labels).item() == 0.0
    single = torch.zeros(2, 2, requires_grad=True)
    drift = cross_class_drift(single, torch.zeros(2, 2), torch.tensor([1, 1]))  # no pair of different classes
    drift.backward()
    assert drift.item() == 0.0 and torch.equal(single.grad, torch.zeros(2, 2))


def cross_class_change(keep: float) -> float:
    """Mean squared change, from the backbone's, of the distances between different
    classes' embeddings after training the identity head with `keep_geometry=keep`."""
    features, labels = feature_table(seed=7)
    net = identity_net(features)
    config = TrainConfig(folder="unused", out_dir="unused", batch_size=16, samples_per_class=4, keep_geometry=keep, seed=0)
    HeadLoop(net, features, labels, config, lr=3e-2, seed=1).run(steps=40)
    with torch.no_grad():
        trained, backbone = torch.cdist(*[net.embed_features(features)] * 2), torch.cdist(*[torch.nn.functional.normalize(features, dim=1)] * 2)
    return cross_class_drift(trained, backbone, labels).item()


def test_keep_geometry_holds_distances_between_classes_nearer_the_backbones():
    free, kept = cross_class_change(0.0), cross_class_change(10.0)
    assert free > 0 and kept < 0.5 * free


# ---------------------------------------------------------------- the optimizer
def test_the_lean_optimizer_steps_exactly_as_torchs_fused_adamw(monkeypatch):
    from retrieval_app.training.lean_adamw import LeanAdamW

    def general_step(self, closure=None):
        raise AssertionError("the general step was taken")

    monkeypatch.setattr(LeanAdamW, "step", general_step)  # the kernel is called directly
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(6, 5, generator=generator), torch.randn(5, generator=generator)]
    reference = [torch.nn.Parameter(t.clone()) for t in start]
    lean = [torch.nn.Parameter(t.clone()) for t in start]
    torch_opt = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1, fused=True)
    lean_opt = LeanAdamW(lean, lr=1e-2, weight_decay=0.1)
    for step in range(12):
        grads = [torch.randn(t.shape, generator=generator) for t in start]
        for a, b, g in zip(reference, lean, grads):
            a.grad, b.grad = g.clone(), g.clone()
        if step == 6:  # a schedule changes the rate between steps
            for opt in (torch_opt, lean_opt):
                opt.param_groups[0]["lr"] = 3e-3
        torch_opt.step()
        lean_opt.fast_step()
    assert all(torch.equal(a, b) for a, b in zip(reference, lean))
    assert not all(torch.equal(a, t) for a, t in zip(lean, start))
    restored = torch.optim.AdamW([torch.nn.Parameter(t.clone()) for t in start], lr=1e-2, weight_decay=0.1, fused=True)
    monkeypatch.undo()
    restored.load_state_dict(lean_opt.state_dict())  # checkpoints load into the plain optimizer
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], torch_opt.state_dict()["state"][0]["exp_avg"])


def test_the_lean_optimizer_takes_the_general_step_where_the_kernel_alone_would_differ():
    from retrieval_app.training.lean_adamw import LeanAdamW

    param = torch.nn.Parameter(torch.ones(3))
    reference = torch.nn.Parameter(torch.ones(3))
    lean_opt = LeanAdamW([param], lr=1e-1, amsgrad=True)
    torch_opt = torch.optim.AdamW([reference], lr=1e-1, amsgrad=True, fused=True)
    for grad in (torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.1, 0.1, 0.1])):
        param.grad, reference.grad = grad.clone(), grad.clone()
        lean_opt.fast_step()
        torch_opt.step()
    assert torch.equal(param, reference) and "max_exp_avg_sq" in lean_opt.state[param]

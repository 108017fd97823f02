"""The trainer's options: prefetching, the moving average of the weights, flip averaging, model flags.

- Prefetch: items in order, errors where the batch was wanted, a thread that stops when
  closed; a run with --prefetch feeds the steps bit for bit the same batches as one
  without, and ends with the same parameters.
- EMA: the update's formula and purity on every backend (against the NumPy result);
  evaluated, checkpointed, resumed exactly, resized with progressive resolution; the jax
  step's run keeps the same average as the numpy one.
- Flip averaging: the logits of an image and its mirror, averaged.
- --pos-embed, --classifier, --init-attention reach the model's config and initialisation.
"""

import json
import threading
import time

import numpy as np
import pytest
from backends import BACKENDS

from tinyvit import ViT, get_preset
from tinyvit.backend import get_backend
from tinyvit.checkpoint import load_checkpoint
from tinyvit.ema import ema_decay, ema_start, ema_update
from tinyvit.errors import UsageError
from tinyvit.evaluate import evaluate_arrays
from tinyvit.evaluate import main as evaluate_main
from tinyvit.prefetch import Prefetch
from tinyvit.train import HostStep, build_parser, main, train

SMALL = ["--data", "shapes:64", "--preset", "testing", "--image-size", "16", "--batch-size", "16",
         "--backend", "numpy", "--threads", "1", "--no-progress", "--seed", "3"]  # fmt: skip


def run(tmp_path, *extra, out="run"):
    return train(build_parser().parse_args(SMALL + ["--out", str(tmp_path / out), *extra]))


# -- prefetch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_gives_every_item_in_order(depth):
    with Prefetch(lambda i: i * i, range(7), depth) as items:
        assert list(items) == [i * i for i in range(7)]


def test_prefetch_raises_the_error_at_the_item_that_failed():
    def make(i):
        if i == 2:
            raise KeyError("batch 2")
        return i

    with Prefetch(make, range(5), depth=2) as items:
        assert next(items) == 0 and next(items) == 1
        with pytest.raises(KeyError, match="batch 2"):
            next(items)


def test_prefetch_stays_at_most_depth_ahead_and_its_thread_ends_on_close():
    made = []
    with Prefetch(made.append, range(1000), depth=2) as items:
        next(items)
        time.sleep(0.3)
        assert len(made) <= 1 + 2 + 1  # the one taken, a full queue, one waiting to be put
        threads = [t for t in threading.enumerate() if t.name == "tinyvit-prefetch"]
        assert len(threads) == 1
    assert not threads[0].is_alive()
    assert len(made) < 1000


@pytest.mark.parametrize("depth", [-1, 1.5, True])
def test_prefetch_refuses_a_bad_depth(depth):
    with pytest.raises(ValueError, match="prefetch depth must be an integer >= 0"):
        Prefetch(lambda i: i, range(3), depth)


def test_a_run_with_prefetch_takes_the_same_steps_bit_for_bit(tmp_path, monkeypatch):
    """Every batch the steps see, and every loss, are identical with and without the thread
    (two resolutions, augmentation on); the parameters end equal."""
    seen = {}
    call = HostStep.__call__

    def recording(self, images, labels, lr):
        result = call(self, images, labels, lr)
        seen[self.tag].append((images.copy(), labels.copy(), float(result.loss)))
        return result

    monkeypatch.setattr(HostStep, "__call__", recording)
    for depth in ("0", "3"):
        monkeypatch.setattr(HostStep, "tag", depth, raising=False)
        seen[depth] = []
        run(tmp_path, "--epochs", "2", "--progressive", "8:1", "--dtype", "float64", "--prefetch", depth, out=depth)
    assert len(seen["0"]) == len(seen["3"]) == 8
    for i, ((x0, y0, l0), (x3, y3, l3)) in enumerate(zip(seen["0"], seen["3"], strict=True)):
        assert x0.dtype == x3.dtype and np.array_equal(x0, x3) and np.array_equal(y0, y3), f"batch {i}"
        assert l0 == l3, f"step {i + 1}: loss {l0!r} without prefetch, {l3!r} with"
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.npz") for d in ("0", "3"))
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12, atol=1e-15, err_msg=k)


# -- the moving average -----------------------------------------------------------------------------


def test_ema_decay_ramps_up_to_the_decay():
    assert ema_decay(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay(10**6, 0.999) == 0.999


@pytest.mark.usefixtures("fast_simulator_barriers", "small_cuda_blocks")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ema_update_is_the_formula_and_leaves_its_inputs_alone(backend):
    ops = get_backend(backend)
    rng = np.random.default_rng(0)
    host_ema = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    host_params = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    ema = {k: ops.asarray(v, np.float64) for k, v in host_ema.items()}
    params = {k: ops.asarray(v, np.float64) for k, v in host_params.items()}
    new = ema_update(ops, ema, params, 0.75)
    for k, old in host_ema.items():
        np.testing.assert_allclose(ops.to_numpy(new[k]), 0.75 * old + 0.25 * host_params[k], rtol=1e-14)
        assert np.array_equal(ops.to_numpy(ema[k]), old) and np.array_equal(ops.to_numpy(params[k]), host_params[k])
    start = ema_start(ops, params)
    assert all(start[k] is not params[k] and np.array_equal(ops.to_numpy(start[k]), host_params[k]) for k in params)


def test_ema_is_evaluated_checkpointed_and_resumed_exactly(tmp_path):
    """A run with --ema stopped mid-epoch 2 (after a resolution change) and resumed ends with the
    average of the run never stopped; the average is in the metrics and the checkpoint, and
    `evaluate --ema` reads it."""
    schedule = ["--epochs", "3", "--progressive", "8:1", "--dtype", "float64", "--ema", "0.9"]
    summary = run(tmp_path, *schedule, out="straight")
    run(tmp_path, *schedule, "--max-steps", "6", out="interrupted")
    main(["--out", str(tmp_path / "interrupted"), "--resume", "--no-progress", "--threads", "1"])
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.npz")
    b = load_checkpoint(tmp_path / "interrupted" / "checkpoint.npz")
    assert set(a.ema) == set(a.params) and a.state["step"] == b.state["step"] == 12
    for k in a.ema:
        np.testing.assert_allclose(b.ema[k], a.ema[k], rtol=1e-10, atol=1e-12, err_msg=k)
        assert a.ema[k].shape == a.params[k].shape
    moved = [k for k in a.params if not np.allclose(a.ema[k], a.params[k])]
    assert moved, "the average should lag behind the trained weights"
    lines = [json.loads(s) for s in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= m["ema_test_acc"] <= 1.0 for m in lines)
    assert summary["ema_test_acc"] == lines[-1]["ema_test_acc"]
    model = ViT(a.cfg, dtype=np.float64, params=a.ema, normalization=(a.state["mean"], a.state["std"]))
    from tinyvit.data import load_dataset

    ds = load_dataset("shapes:64", image_size=16, seed=3)
    _, acc, _ = evaluate_arrays(model, ds.test_images, ds.test_labels)
    assert acc == lines[-1]["ema_test_acc"]


def test_resuming_with_ema_needs_an_average_in_the_checkpoint(tmp_path):
    run(tmp_path, "--epochs", "2", "--max-steps", "2", out="plain")
    with pytest.raises(SystemExit, match="--ema"):
        main(["--out", str(tmp_path / "plain"), "--resume", "--ema", "0.9", "--no-progress"])
    with pytest.raises(SystemExit, match="holds no moving average"):
        evaluate_main(["--checkpoint", str(tmp_path / "plain" / "checkpoint.npz"), "--ema", "--backend", "numpy"])


def test_the_jax_step_keeps_the_same_average_as_the_numpy_step(tmp_path):
    pytest.importorskip("jax", reason="the jax backend is optional: pip install -e '.[jax]'")
    flags = ["--epochs", "1", "--dtype", "float64", "--ema", "0.8", "--no-augment"]
    run(tmp_path, *flags, out="numpy")
    run(tmp_path, *flags, "--backend", "jax", "--devices", "1", out="jax")
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.npz") for d in ("numpy", "jax"))
    for k in a.ema:
        np.testing.assert_allclose(b.ema[k], a.ema[k], rtol=1e-8, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("flags,message", [(["--ema", "1.0"], "--ema must be in"), (["--prefetch", "-1"], "--prefetch must be"),
                                           (["--eval-every", "0"], "--eval-every must be at least 1"),
                                           (["--crop-pad", "0.5"], "--crop-pad is a fraction"), (["--crop-pad", "-0.1"], "--crop-pad is a fraction")])
def test_bad_option_values_are_refused(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        run(tmp_path, *flags)


@pytest.mark.parametrize("flags, pads", [([], {8: 1, 16: 2}), (["--crop-pad", "0.0625"], {8: 1, 16: 1}),
                                         (["--crop-pad", "0.25"], {8: 2, 16: 4}), (["--crop-pad", "0"], {8: 0, 16: 0})])
def test_crop_pad_scales_with_each_epochs_image_size(tmp_path, monkeypatch, flags, pads):
    """The crop's padding is --crop-pad times the side of the images being trained, at least 1 px; 0: flips only."""
    from tinyvit import data

    seen, augment = {}, data.augment_batch

    def spy(images, rng, pad=4, **kw):
        seen.setdefault(images.shape[1], set()).add(pad)
        return augment(images, rng, pad=pad, **kw)

    monkeypatch.setattr(data, "augment_batch", spy)
    run(tmp_path, "--epochs", "2", "--progressive", "8:1", "--max-steps", "6", *flags)
    assert seen == {size: {pad} for size, pad in pads.items()}


# -- evaluating every N-th epoch -------------------------------------------------------------------


def test_eval_every_skips_epochs_but_not_resolution_changes_the_last_or_a_stop(tmp_path, capsys):
    """6 epochs, 2 at 8 px then 4 at 16, --eval-every 3: epochs 2 (the last at 8 px), 3, 6 (the last)
    are evaluated; the others log null test figures, and the training itself is unchanged."""
    schedule = ["--epochs", "6", "--progressive", "8:2", "--dtype", "float64"]
    every = run(tmp_path, *schedule, "--eval-every", "3", out="every")
    lines = [json.loads(s) for s in (tmp_path / "every" / "metrics.jsonl").read_text().splitlines()]
    assert [m["test_acc"] is not None for m in lines] == [False, True, True, False, False, True]
    assert "not evaluated (--eval-every 3)" in capsys.readouterr().err
    each = run(tmp_path, *schedule, out="each")
    each_lines = [json.loads(s) for s in (tmp_path / "each" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_loss"] for m in lines] == [m["train_loss"] for m in each_lines]
    assert every["test_acc"] == each["test_acc"] == lines[-1]["test_acc"]
    stopped = run(tmp_path, *schedule, "--eval-every", "3", "--max-steps", "5", out="stopped")
    assert stopped["stopped"] and stopped["test_acc"] is not None  # a stop mid-epoch is evaluated


# -- the cosine over compute -------------------------------------------------------------------------


def test_forward_flops_count_vit_b16_as_published():
    """ViT-B/16 at 224 px: 17.6 GMACs a forward pass (timm's model card), 35.1 GFLOPs."""
    assert get_preset("vit-b16").forward_flops() / 2 == pytest.approx(17.57e9, rel=2e-3)
    testing = get_preset("testing")
    assert testing.forward_flops(batch=8) == 8 * testing.forward_flops()


def test_decay_over_compute_gives_each_epoch_its_share_of_flops(tmp_path):
    """6 epochs, 3 at 8 px then 3 at 16: over steps the cosine is past half when 16 px starts; over
    compute only the 8 px epochs' share of FLOPs of it is done. Both warm up alike and end at --min-lr."""
    from tinyvit.optim import lr_at
    from tinyvit.train import set_up

    runs = {}
    for name in ("steps", "compute"):
        argv = SMALL + ["--out", str(tmp_path / name), "--epochs", "6", "--progressive", "8:3", "--lr", "1e-3",
                        "--min-lr", "0", "--decay-over", name]  # fmt: skip
        runs[name] = set_up(build_parser().parse_args(argv))[0]
    steps, compute = runs["steps"], runs["compute"]
    n = steps.steps_per_epoch
    cfg = steps.cfg
    low = cfg.replace(image_size=8).forward_flops() / cfg.forward_flops()  # an 8 px step's work
    assert 0.2 < low < 0.3  # a quarter of the tokens
    first_at_16 = 3 * n + 1
    assert steps.lr(first_at_16) == pytest.approx(lr_at(first_at_16, 1e-3, n, 6 * n))
    assert compute.lr(first_at_16) == pytest.approx(lr_at(3 * n * low + 1, 1e-3, n * low, 3 * n * low + 3 * n))
    assert compute.lr(first_at_16) > 1.5 * steps.lr(first_at_16)
    for step in (1, n // 2, n):  # the warmup, all at 8 px: the same in both
        assert compute.lr(step) == pytest.approx(steps.lr(step))
    assert compute.lr(6 * n) == pytest.approx(0, abs=1e-12) and steps.lr(6 * n) == pytest.approx(0, abs=1e-12)
    lrs = [compute.lr(s) for s in range(n, 6 * n + 1)]
    assert all(np.diff(lrs) <= 0)  # after the warmup it only falls


def test_decay_over_final_holds_the_peak_until_the_final_resolution(tmp_path):
    """6 epochs, 2 at 8 px, 2 at 12, then 2 at 16: the warmup, the peak to the last 12 px step, then the
    cosine over the 16 px steps alone, down to --min-lr."""
    from tinyvit.optim import lr_at
    from tinyvit.train import set_up

    argv = SMALL + ["--out", str(tmp_path), "--epochs", "6", "--progressive", "8:2,12:2", "--lr", "1e-3",
                    "--min-lr", "0", "--decay-over", "final"]  # fmt: skip
    run = set_up(build_parser().parse_args(argv))[0]
    n = run.steps_per_epoch
    assert [run.size_for_epoch(e) for e in range(6)] == [8, 8, 12, 12, 16, 16]
    assert run.lr(n // 2) == pytest.approx(1e-3 * (n // 2) / n)
    assert run.lr(n + 1) == run.lr(4 * n) == 1e-3
    assert run.lr(5 * n) == pytest.approx(5e-4)  # halfway through the last two epochs
    assert run.lr(4 * n + 1) == pytest.approx(lr_at(1, 1e-3, 0, 2 * n))
    assert run.lr(6 * n) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_at_a_resolution_change_the_pos_embed_moments_follow_the_parameter(tmp_path, classifier):
    """AdamW's m and v of pos_embed are interpolated to the new grid as pos_embed is (not zeroed under
    a running step count); every other moment and the step count are kept as they were."""
    from tinyvit.resolution import resize_pos_embed
    from tinyvit.train import set_up, step_at_resolution

    argv = SMALL + ["--out", str(tmp_path / classifier), "--epochs", "2", "--progressive", "8:1", "--classifier", classifier]
    run, _, step, _ = set_up(build_parser().parse_args(argv))
    assert step.model.cfg.image_size == 8
    rng = np.random.default_rng(0)
    state = {k: np.int64(500) if k == "step" else rng.random(v.shape).astype(v.dtype) for k, v in step.optimizer_state().items()}
    step.optimizer.load_state_dict(state)
    grown, _ = step_at_resolution(run, step, None, 16)
    got = grown.optimizer_state()
    assert grown.model.cfg.image_size == 16 and got["step"] == 500
    for k, old in state.items():
        if k.endswith("/pos_embed"):
            want = resize_pos_embed(old, grown.model.cfg.grid_size, grown.model.cfg.has_class_token)
            assert got[k].shape == grown.model.params["pos_embed"].shape == want.shape
            np.testing.assert_allclose(got[k], want, rtol=1e-6)
            assert got[k].min() >= old.min() and got[k].max() <= old.max()  # convex mixes: v stays >= 0
        else:
            np.testing.assert_array_equal(got[k], old)


@pytest.mark.parametrize("decay_over", ["compute", "final"])
def test_decay_over_without_resolution_changes_is_the_cosine_over_steps(tmp_path, decay_over):
    run(tmp_path, "--epochs", "2", "--decay-over", decay_over, out=decay_over)
    run(tmp_path, "--epochs", "2", out="steps")
    one, other = ([json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                  for name in (decay_over, "steps"))  # fmt: skip
    assert [(m["lr"], m["train_loss"]) for m in one] == [(m["lr"], m["train_loss"]) for m in other]


# -- flip averaging ---------------------------------------------------------------------------------


def test_flip_averaging_averages_the_logits_of_each_image_and_its_mirror():
    cfg = get_preset("testing")
    rng = np.random.default_rng(0)
    model = ViT(cfg, dtype=np.float64, params={k: v + rng.normal(0, 0.3, v.shape) for k, v in ViT(cfg).numpy_params().items()})
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, cfg.num_classes, size=5)
    mean, std = np.full(3, 120.0 / 255), np.full(3, 0.25)
    x = (images / 255.0 - mean) / std
    want = 0.5 * (model(x) + model(x[:, :, ::-1]))
    _, _, preds = evaluate_arrays(model, images, labels, mean, std, batch_size=2, flip=True)
    assert np.array_equal(preds, want.argmax(axis=1))
    assert not np.allclose(model(x), model(x[:, :, ::-1]))  # the mirror is another input to this model
    mirrored = np.concatenate([images[:, :, :4], images[:, :, :4][:, :, ::-1]], axis=2)  # left-right symmetric
    plain = evaluate_arrays(model, mirrored, labels, mean, std)
    flipped = evaluate_arrays(model, mirrored, labels, mean, std, flip=True)
    assert flipped[0] == pytest.approx(plain[0], rel=1e-12) and np.array_equal(flipped[2], plain[2])


def test_eval_flip_in_the_trainer_and_evaluate(tmp_path, capsys):
    summary = run(tmp_path, "--epochs", "1", "--eval-flip")
    assert 0.0 <= summary["test_acc"] <= 1.0
    evaluate_main(["--checkpoint", str(tmp_path / "run" / "checkpoint.npz"), "--flip", "--backend", "numpy", "--json"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] == summary["test_acc"]


# -- model flags ------------------------------------------------------------------------------------


def test_model_flags_reach_the_config_and_the_initialisation(tmp_path):
    run(tmp_path, "--epochs", "2", "--progressive", "8:1", "--pos-embed", "sincos2d", "--classifier", "gap",
        "--init-attention", "mimetic", "--max-steps", "5")  # fmt: skip
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ck.cfg.pos_embed == "sincos2d" and ck.cfg.classifier == "gap" and ck.cfg.image_size == 16
    assert "pos_embed" not in ck.params and "cls_token" not in ck.params
    assert ck.state["options"]["init_attention"] == "mimetic"


def test_init_refuses_model_flags_it_cannot_honour(tmp_path):
    with pytest.raises(UsageError, match="--pos-embed"):
        run(tmp_path, "--init", str(tmp_path / "any.npz"), "--pos-embed", "none")


# -- the cifar10 recipe as the defaults -------------------------------------------------------------


def filled(*argv):
    from tinyvit.train import fill_defaults

    args = build_parser().parse_args(list(argv))
    fill_defaults(args)
    return args


def test_data_cifar10_alone_is_the_recipe():
    from tinyvit.train import RECIPES

    args = filled("--data", "cifar10")
    for name, value in RECIPES["cifar10"].items():
        assert getattr(args, name) == value, name


def test_a_flag_given_beats_the_recipe_and_other_data_get_the_plain_defaults():
    from tinyvit.train import PLAIN_DEFAULTS, RECIPES

    recipe = RECIPES["cifar10"]
    args = filled("--data", "cifar10", "--epochs", "3", "--no-eval-flip", "--progressive", "")
    assert (args.epochs, args.eval_flip, args.progressive) == (3, False, "")
    assert args.classifier == recipe["classifier"]  # the rest still the recipe's
    plain = filled("--data", "shapes")
    for name, value in PLAIN_DEFAULTS.items():
        assert getattr(plain, name) == value, name
    assert plain.classifier is None and plain.lr is None  # the preset's, and the optimiser's default
    tuned = filled("--data", "cifar10", "--init", "ViT-B_16.npz")  # fine-tuning: nothing of the recipe
    assert tuned.classifier is None and tuned.epochs == PLAIN_DEFAULTS["epochs"]


def test_the_recipe_is_a_valid_run_and_its_help_line_sets_it():
    from tinyvit.train import RECIPES, check_options, flag_text, model_config

    recipe = RECIPES["cifar10"]
    args = filled("--data", "cifar10")
    cfg = model_config(args, None)
    phases = check_options(args, cfg)
    assert sum(n for _, n in phases) < args.epochs and phases[0][0] < cfg.image_size
    argv = " ".join(flag_text(k, v) for k, v in recipe.items()).split()
    spelled = filled("--data", "shapes", *argv)  # the flags the help prints give the same options elsewhere
    assert {k: getattr(spelled, k) for k in recipe} == recipe

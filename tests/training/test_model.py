"""The network: every encoder, missing modalities, gradients, the per-treatment heads."""

import itertools

import numpy as np
import pytest
import torch
from spinecast.datasets import load_cohort
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.inputs import INPUTS, MODALITIES
from spinecast.datasets.sentences import SentenceWindow, load_tokenizer
from spinecast.training.config import ImageConfig, ModelConfig, TabularConfig, TextConfig
from spinecast.training.inference import encode_frame
from spinecast.training.model import SpineCastNet
from spinecast.training.module import SpineCastModule
from transformers import RobertaConfig, RobertaModel

B = 6


def tiny_config(tiny_bert, **changes) -> ModelConfig:
    text = TextConfig(
        pretrained=tiny_bert, max_sentences=16, max_tokens=24, **changes.pop("text", {})
    )
    return ModelConfig(
        **{
            "dim": 32,
            "text": text,
            "image": ImageConfig(backbone="small_cnn"),
            "heads": 2,
            "fusion_layers": 1,
            "modality_dropout": 0.0,
            **changes,
        }
    )


@pytest.fixture(scope="module")
def batch(tiny_bert, small_cohort):
    frame = load_cohort(small_cohort / "cohort.parquet", training=True)
    frame = frame[
        frame["clinical_note"].notna()
        & frame["imaging_report"].notna()
        & frame["mri_image"].notna()
    ].head(B)
    arrays = encode_frame(
        frame, FeatureEncoding.fit(frame), load_tokenizer(tiny_bert), SentenceWindow(16, 24), 128
    )
    out = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    out["image"] = out["image"].float().div(255).unsqueeze(1)
    for k in ("note_ids", "note_mask", "report_ids", "report_mask"):
        out[k] = out[k].long()
    return out


def drop(batch: dict, modalities) -> dict:
    """The same patients with some modalities absent."""
    b = dict(batch)
    if "clinical_note" in modalities:
        b["note_mask"] = torch.zeros_like(b["note_mask"])
    if "imaging_report" in modalities:
        b["report_mask"] = torch.zeros_like(b["report_mask"])
    if "mri_image" in modalities:
        b["image_present"] = torch.zeros_like(b["image_present"])
    return b


def run(net, batch):
    return net(*(batch[k] for k in INPUTS))


OPTIONAL = MODALITIES[1:]
SUBSETS = [s for r in range(len(OPTIONAL) + 1) for s in itertools.combinations(OPTIONAL, r)]


@pytest.mark.parametrize("fusion", ["attention", "gated"])
@pytest.mark.parametrize("tabular", ["ft_transformer", "mlp"])
def test_any_subset_of_modalities_can_be_missing(tiny_bert, batch, fusion, tabular):
    torch.manual_seed(0)
    net = SpineCastNet(
        tiny_config(tiny_bert, fusion=fusion, tabular=TabularConfig(kind=tabular))
    ).eval()
    for missing in SUBSETS:
        b = drop(batch, missing)
        satisfied, mcid, odi, _, propensity, present = run(net, b)
        members = net.config.members
        assert satisfied.shape == mcid.shape == odi.shape == (
            B,
            members,
            4,
        ) and propensity.shape == (B, 4)
        assert torch.isfinite(satisfied).all() and ((odi >= 0) & (odi <= 100)).all()
        assert present[:, 0].all() and present[:, 1:].sum().item() == B * (3 - len(missing))
        # An absent modality's content cannot leak into the prediction...
        scrambled = dict(
            b,
            note_ids=b["note_ids"].flip(0),
            report_ids=b["report_ids"].flip(0),
            image=b["image"].flip(0),
        )
        again = run(net, scrambled)[0]
        if len(missing) == 3:
            assert torch.allclose(satisfied, again, atol=1e-6)
        else:  # ... while a present one's does.
            assert not torch.allclose(satisfied, again, atol=1e-6)


def test_gradient_reaches_every_encoder(tiny_bert, batch):
    torch.manual_seed(0)
    net = SpineCastNet(tiny_config(tiny_bert, text={"trainable_layers": 1, "share_weights": False}))
    net.train()
    out = run(net, batch)
    (out.satisfied.sum() + out.mcid.sum() + out.odi.sum()).backward()
    for name, module in [
        ("note backbone", net.note.sentences.backbone.encoder.layer[-1]),
        ("report backbone", net.report.sentences.backbone.encoder.layer[-1]),
        ("note pooling", net.note.project),
        ("tabular", net.tabular),
        ("image", net.image),
        ("fusion", net.fusion),
        ("note and report together", net.cross),
        ("trained word channel", net.note.lexical),
    ]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert (
            grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        ), name
    frozen = net.note.sentences.backbone.encoder.layer[0]
    assert all(p.grad is None for p in frozen.parameters())


def test_frozen_backbone_caches_identical_sentences(tiny_bert, batch):
    net = SpineCastNet(tiny_config(tiny_bert)).train()
    cache = net.note.sentences.cache
    first = run(net.eval(), batch)[0]
    n_cached = len(cache)
    unique = len(
        {
            row.numpy().tobytes()
            for row in batch["note_ids"].flatten(0, 1)[batch["note_mask"].flatten(0, 1).any(1)]
        }
    )
    assert (
        0
        < n_cached
        <= unique + len({row.numpy().tobytes() for row in batch["report_ids"].flatten(0, 1)})
    )
    calls = []
    net.note.sentences.backbone.register_forward_hook(lambda *_: calls.append(1))
    second = run(net, batch)[0]
    assert not calls and len(cache) == n_cached  # every sentence came from the cache
    assert torch.allclose(second, first)
    net.load_state_dict(net.state_dict())  # new weights invalidate the cache
    assert len(cache) == 0


def test_loss_uses_only_the_observed_treatments_effect(tiny_bert, batch):
    """Outcome losses reach the shared prognosis and the observed treatment's effect only; the
    effect penalty alone moves the other effects, and only toward zero."""
    torch.manual_seed(0)
    module = SpineCastModule(
        tiny_config(tiny_bert), effect_penalty=0.0, propensity_weight=0.0
    ).eval()
    b = dict(batch, treatment=torch.full((B,), 2))  # everyone had decompression
    out = module(b)
    out.effect.retain_grad()
    module._loss(b, out, 0).backward()
    grad = out.effect.grad  # (B, K, T - 1, 3): effects over physical therapy
    assert grad[:, :, 1].abs().sum() > 0  # decompression's effect
    assert grad[:, :, [0, 2]].abs().sum() == 0  # injection's and fusion's effects
    assert module.net.outcomes.prognosis.weight.grad.abs().sum() > 0
    shrink = SpineCastModule(
        tiny_config(tiny_bert), effect_penalty=1.0, propensity_weight=0.0
    ).eval()
    out = shrink(b)
    out.effect.retain_grad()
    shrink._loss(b, out, 0).backward()
    # the penalty's gradient on the unobserved effects points away from zero: descent shrinks them
    unobserved = out.effect[:, :, [0, 2]]
    assert (out.effect.grad[:, :, [0, 2]] * unobserved > 0).all()


def test_each_member_learns_from_its_own_bootstrap_resample(tiny_bert, batch):
    """A member whose bootstrap weights are zero for every patient gets no gradient."""
    torch.manual_seed(0)
    module = SpineCastModule(
        tiny_config(tiny_bert), effect_penalty=0.0, propensity_weight=0.0
    ).eval()
    members = module.net.config.members
    weights = torch.ones(B, members)
    weights[:, 3] = 0
    b = dict(batch, treatment=torch.full((B,), 2), bootstrap=weights)
    out = module(b)
    out.satisfied.retain_grad()
    module._loss(b, out, 0).backward()
    per_member = out.satisfied.grad.abs().sum(dim=(0, 2))
    assert per_member[3] == 0 and (per_member[[0, 1, 2, 4]] > 0).all()


def test_propensity_head_learns_who_got_which_treatment(tiny_bert, batch):
    torch.manual_seed(0)
    module = SpineCastModule(tiny_config(tiny_bert), propensity_weight=1.0)
    b = dict(batch, treatment=torch.tensor([0, 3, 0, 3, 0, 3]))
    optimizer = torch.optim.Adam(module.net.propensity.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        module._loss(b, module.eval()(b), 0).backward()
        optimizer.step()
    p = module.eval()(b).propensity.softmax(dim=-1)
    assert (p[torch.arange(B), b["treatment"]] > 0.8).all()


def test_missing_labels_are_masked(tiny_bert, batch):
    """Without labels only the propensity and effect terms remain (they need no outcome)."""
    module = SpineCastModule(tiny_config(tiny_bert), effect_penalty=0.0, propensity_weight=0.0)
    none = dict(
        batch,
        satisfied_present=torch.zeros(B, dtype=torch.bool),
        mcid_present=torch.zeros(B, dtype=torch.bool),
        odi_12m_present=torch.zeros(B, dtype=torch.bool),
    )
    assert module._loss(none, module(none), 0).item() == 0.0


def test_non_finite_loss_stops_with_the_batch_named(tiny_bert, batch):
    module = SpineCastModule(tiny_config(tiny_bert))
    bad = dict(batch, odi_12m=torch.full((B,), float("nan")))
    with pytest.raises(FloatingPointError, match="batch 7"):
        module._loss(bad, module(bad), 7)


def test_document_encoder_without_context_layers(tiny_bert, batch):
    net = SpineCastNet(tiny_config(tiny_bert, text={"sentence_layers": 0})).eval()
    assert net.note.context is None
    satisfied = run(net, batch)[0]
    assert torch.isfinite(satisfied).all() and not torch.allclose(
        satisfied, run(net, drop(batch, OPTIONAL))[0]
    )


def tiny_roberta() -> RobertaModel:
    """A randomly initialised 2-layer RoBERTa (hidden 32): a text encoder that is not a BERT."""
    config = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
    )
    return RobertaModel(config, add_pooling_layer=False)


def _onnx_probabilities(net, arrays: dict, folder) -> list[np.ndarray]:
    """Export `net` as the bundle's graphs (traced on two records) and run them on `arrays` the
    way the predictor does: distinct sentences by length group through the sentence graph(s),
    the images through the image graph, then the patient graph."""
    import onnxruntime as ort
    from spinecast.datasets.inputs import PATIENT_INPUTS
    from spinecast.serving.embeddings import SentenceEmbedder
    from spinecast.training.export import graph_names
    from spinecast.training.graph import to_onnx

    names = graph_names(net)
    to_onnx(net, {k: v[:2] for k, v in arrays.items()}, folder, names)
    sessions = {
        n: ort.InferenceSession(str(folder / n), providers=["CPUExecutionProvider"])
        for n in set(names.values())
    }
    inputs = dict(arrays)
    for text in ("note", "report"):
        embedder = SentenceEmbedder(sessions[names[text]], folder / names[text], cache=None)
        inputs[f"{text}_emb"] = embedder(inputs[f"{text}_ids"], inputs[f"{text}_mask"])
    [inputs["image_emb"]] = sessions[names["image"]].run(None, {"image": inputs["image"]})
    return sessions[names["patient"]].run(None, {k: inputs[k] for k in PATIENT_INPUTS})


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"text": {"share_weights": False}},
        {"fusion": "gated", "tabular": TabularConfig(kind="mlp")},
        {"image": ImageConfig(backbone="mobilenet_v3_small")},
        {"image": ImageConfig(backbone="resnet18")},
    ],
    ids=["default", "separate-text-encoders", "gated-fusion-mlp-fields", "mobilenet", "resnet18"],
)
def test_each_architecture_exports_and_matches_eager(changes, tiny_bert, batch, tmp_path):
    """The bundle's graphs of every architecture the configs can ask for equal the eager network
    (traced on two records, run on six, one of them without a note)."""
    torch.manual_seed(0)
    net = SpineCastNet(tiny_config(tiny_bert, **changes)).eval()
    arrays = {k: v.numpy() for k, v in drop(batch, ["clinical_note"]).items() if k in INPUTS}
    arrays["note_mask"][1:] = batch["note_mask"][1:].numpy()  # only the first record lacks a note
    got = _onnx_probabilities(net, arrays, tmp_path)
    with torch.no_grad():
        expected = net.probabilities(*(torch.from_numpy(arrays[k]) for k in INPUTS))
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected):
        assert g.shape == e.shape and np.abs(g - e.numpy()).max() <= 1e-4


def test_a_non_bert_text_encoder_exports_and_matches_eager(batch, tmp_path):
    """A RoBERTa sentence graph (another position scheme, padding id 1) matches too."""
    folder = tmp_path / "tiny_roberta"
    torch.manual_seed(0)
    tiny_roberta().save_pretrained(folder)
    net = SpineCastNet(tiny_config(str(folder))).eval()
    arrays = {k: v.numpy() for k, v in batch.items() if k in INPUTS}
    got = _onnx_probabilities(net, arrays, tmp_path)
    with torch.no_grad():
        expected = net.probabilities(*(torch.from_numpy(arrays[k]) for k in INPUTS))
    for g, e in zip(got, expected):
        assert np.abs(g - e.numpy()).max() <= 1e-4


def test_a_checkpoint_rebuilds_the_fields_it_was_trained_on(tiny_bert, small_cohort, tmp_path):
    """A checkpoint from before a field was added (fewer numeric fields than today's default)
    loads, encodes and predicts with its own fields."""
    from spinecast.datasets.features import NUMERIC_FIELDS
    from spinecast.training.inference import load_module

    frame = load_cohort(small_cohort / "cohort.parquet", training=True).head(4)
    older = FeatureEncoding.fit(frame, numeric=NUMERIC_FIELDS)
    module = SpineCastModule(config=tiny_config(tiny_bert), feature_encoding=older.to_dict())
    assert (
        module.net.tabular.num_weight.shape[0]
        == len(NUMERIC_FIELDS)
        < len(FeatureEncoding().numeric)
    )
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2.5.0",
        },
        tmp_path / "old.ckpt",
    )
    loaded = load_module(tmp_path / "old.ckpt")
    arrays = encode_frame(
        frame, loaded.feature_encoding, load_tokenizer(tiny_bert), SentenceWindow(16, 24), 128
    )
    assert arrays["numeric"].shape == (4, len(NUMERIC_FIELDS))

